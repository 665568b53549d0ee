"""The one mapping from Moonflower's exception tree to OpenAI's error body and status code.

OpenAI's shape is `{"error": {"message", "type", "param", "code"}}`; every OpenAI-dialect
route and the OpenAI SSE error event use this module and nothing else.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.generation import Failed, Finished

_STATUS_AND_TYPE: list[tuple[type[errors.MoonflowerError], int, str]] = [
    (errors.BodyTooLarge, 413, "invalid_request_error"),
    (errors.InvalidRequest, 400, "invalid_request_error"),
    (errors.AuthenticationFailed, 401, "invalid_request_error"),
    (errors.PermissionDenied, 403, "invalid_request_error"),
    (errors.InsufficientFunds, 402, "insufficient_quota"),
    (errors.RouteNotFound, 404, "invalid_request_error"),
    (errors.ModelNotFound, 404, "invalid_request_error"),
    (errors.ShuttingDown, 503, "service_unavailable_error"),
    (errors.StoreUnavailable, 503, "service_unavailable_error"),
    (errors.NoProviderAvailable, 503, "service_unavailable_error"),
    # A full or timed-out queue is 429 with Retry-After (our API's contract for "wait and
    # retry"), told apart from a key's own limits by its type and code
    # (`service_unavailable_error` / `server_is_overloaded`). The SDKs retry 429s.
    (errors.Overloaded, 429, "service_unavailable_error"),
    # OpenAI names the exhausted limit in `type` ("requests" or "tokens"); see below.
    (errors.RateLimited, 429, "requests"),
    (errors.UpstreamTimeout, 504, "timeout_error"),
    (errors.ProviderFailed, 502, "server_error"),
]


def status_and_body(exc: errors.MoonflowerError) -> tuple[int, dict[str, Any]]:
    status, kind = next(
        ((s, k) for cls, s, k in _STATUS_AND_TYPE if isinstance(exc, cls)), (500, "server_error")
    )
    param = getattr(exc, "param", None)
    if isinstance(exc, errors.ModelNotFound):
        param = "model"
    if isinstance(exc, errors.RateLimited):
        kind = exc.limit
    return status, body(exc.message, kind, param=param, code=exc.code)


def body(message: str, kind: str, *, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_validation_error(exc: ValidationError) -> errors.InvalidRequest:
    """The most specific problem pydantic found, phrased the way OpenAI names fields.

    A value that matches no branch of a union yields one error per branch; the deepest one
    (e.g. `messages[0].content[0].type` rather than `messages[0].content`) says most.
    """
    first = max(exc.errors(), key=lambda err: len(field_path(err["loc"])))
    param = field_path(first["loc"])
    if first["type"] == "missing":
        return errors.InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if first["type"] == "too_long":
        ctx = first.get("ctx", {})
        return errors.InvalidRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx.get('max_length')}, but got an array with length "
            f"{ctx.get('actual_length')} instead.",
            param=param,
            code="array_above_max_length",
        )
    return errors.InvalidRequest(
        f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value"
    )


_UNION_BRANCHES = {"str", "int", "float", "bool", "none", "dict", "list"}


def field_path(loc: tuple[int | str, ...]) -> str:
    """`("messages", 0, "content")` → `messages[0].content`; union branch tags are dropped."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part in _UNION_BRANCHES or part.startswith("_"):
            continue
        else:
            path += f".{part}" if path else part
    return path


def stream_error(event: Finished | Failed) -> dict[str, Any]:
    """The `data:` payload that reports a job's failure inside an OpenAI stream."""
    failure = (
        event
        if isinstance(event, Failed)
        else Failed(code="engine_error", message="The provider stopped the generation.")
    )
    _status, error_body = status_and_body(errors.from_failure(failure))
    return error_body


def stream_error_event(exc: errors.MoonflowerError) -> sse.Event:
    """A stream that failed before its first chunk: the error as a data event (then DONE)."""
    _status, error_body = status_and_body(exc)
    return sse.Event(error_body)
