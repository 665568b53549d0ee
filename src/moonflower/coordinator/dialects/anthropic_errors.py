"""The one mapping from Moonflower's exception tree to Anthropic's error body and status.

Anthropic's shape is `{"type": "error", "error": {"type", "message"}, "request_id"}` with its
own type names (`request_id` is null here; the app fills it in for HTTP error responses).
Every type is one of the nine that Anthropic's OpenAPI document allows in `ErrorResponse`.
`/v1/messages` routes and the Anthropic SSE `error` event use this module only.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import ValidationError

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.dialects.openai_errors import field_path
from moonflower.generation import Failed, Finished

_STATUS_AND_TYPE: list[tuple[type[errors.MoonflowerError], int, str]] = [
    # Anthropic's prose lists `request_too_large` for 413 (sent by its proxy), but its API
    # document and SDKs know only the nine types of `ErrorResponse`, which a client that
    # decodes errors by type would refuse; `invalid_request_error` is the type Anthropic
    # says it uses for other 4xx statuses. The SDKs still raise their 413 error.
    (errors.BodyTooLarge, 413, "invalid_request_error"),
    (errors.InvalidRequest, 400, "invalid_request_error"),
    (errors.AuthenticationFailed, 401, "authentication_error"),
    (errors.PermissionDenied, 403, "permission_error"),
    (errors.InsufficientFunds, 402, "billing_error"),
    (errors.RouteNotFound, 404, "not_found_error"),
    (errors.ModelNotFound, 404, "not_found_error"),
    # Anthropic reports "no capacity right now" as 529, which its SDKs retry with backoff.
    (errors.ShuttingDown, 529, "overloaded_error"),
    (errors.StoreUnavailable, 529, "overloaded_error"),
    (errors.NoProviderAvailable, 529, "overloaded_error"),
    # A full or timed-out queue is 429 with Retry-After (our API's contract for "wait and
    # retry"); Anthropic pairs 429 with `rate_limit_error` only, and the message says the
    # wait is for capacity. The SDKs retry it after Retry-After.
    (errors.ProviderOverloaded, 529, "overloaded_error"),
    (errors.Overloaded, 429, "rate_limit_error"),
    (errors.RateLimited, 429, "rate_limit_error"),
    (errors.UpstreamTimeout, 504, "timeout_error"),
    (errors.ProviderFailed, 502, "api_error"),
]


def status_and_body(exc: errors.MoonflowerError) -> tuple[int, dict[str, Any]]:
    status, kind = next(
        ((s, k) for cls, s, k in _STATUS_AND_TYPE if isinstance(exc, cls)), (500, "api_error")
    )
    return status, body(exc.message, kind)


def body(message: str, kind: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": None}


def from_validation_error(exc: ValidationError) -> errors.InvalidRequest:
    """The most specific problem pydantic found, naming the field as Anthropic does
    (`messages.0.content: Field required`)."""
    first = max(exc.errors(), key=lambda err: len(field_path(err["loc"])))
    param = field_path(first["loc"])
    dotted = param.replace("[", ".").replace("]", "")
    if first["type"] == "missing":
        return errors.InvalidRequest(f"{dotted}: Field required", param=param)
    return errors.InvalidRequest(f"{dotted}: {first['msg']}", param=param)


def stream_error(event: Finished | Failed) -> dict[str, Any]:
    """The payload of the `error` event that reports a job's failure inside a stream."""
    failure = (
        event
        if isinstance(event, Failed)
        else Failed(code="engine_error", message="The provider stopped the generation.")
    )
    _status, error_body = status_and_body(errors.from_failure(failure))
    return error_body


def response_body(exc: errors.MoonflowerError) -> tuple[int, dict[str, Any]]:
    """An HTTP error response's status and body: the body names the request, as Anthropic's
    do (the same body inside a stream has `request_id` null)."""
    status, error_body = status_and_body(exc)
    error_body["request_id"] = "req_" + secrets.token_hex(12)
    return status, error_body


def stream_error_event(exc: errors.MoonflowerError) -> sse.Event:
    """A stream that failed before `message_start`: one `error` event, as Anthropic sends."""
    _status, error_body = status_and_body(exc)
    return sse.Event(error_body, "error")
