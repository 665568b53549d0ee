"""A domain error as an HTTP response in the caller's dialect: the one place that turns a
`MoonflowerError` into a whole error body — in the dialect an inference route marked the
request with (`request.state.dialect`), else Anthropic's or OpenAI's by `caller_dialect`.

The app's exception handlers and the middlewares that answer before the app runs (the sealed
transport, CORS pre-flights) all render errors through `render_error`. The mapping from each
error to a dialect's status and body lives in `dialects.anthropic_errors` and
`dialects.openai_errors`; this module only picks one and builds the response. It must not
log, and knows nothing of routes or jobs.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.dialects import anthropic_errors, openai_errors
from moonflower.coordinator.dialects.caller_dialect import speaks_anthropic
from moonflower.coordinator.dialects.dialect import Dialect
from moonflower.coordinator.services import json_response


def render_error(request: Request, exc: errors.MoonflowerError) -> Response:
    """Render `exc` in the dialect the request speaks; an error that says when to try again
    (`retry_after_s`) also says it in a `Retry-After` header, which SDKs honour."""
    dialect: Dialect[Any] | None = getattr(request.state, "dialect", None)
    if dialect is not None:
        status, body = dialect.errors.body(exc)
    elif speaks_anthropic(request):
        status, body = anthropic_errors.response_body(exc)
    else:
        status, body = openai_errors.status_and_body(exc)
    response = json_response(body, status_code=status)
    retry_after_s = getattr(exc, "retry_after_s", None)
    if isinstance(retry_after_s, int):
        response.headers["Retry-After"] = str(max(1, retry_after_s))
    return response
