"""The one mapping from Moonflower's exception tree to OpenAI's error body and status code.

OpenAI's shape is `{"error": {"message", "type", "param", "code"}}`; every OpenAI-dialect
route and the OpenAI SSE error event use this module and nothing else.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from moonflower import errors

_STATUS_AND_TYPE: list[tuple[type[errors.MoonflowerError], int, str]] = [
    (errors.InvalidRequest, 400, "invalid_request_error"),
    (errors.AuthenticationFailed, 401, "invalid_request_error"),
    (errors.RouteNotFound, 404, "invalid_request_error"),
    (errors.ModelNotFound, 404, "invalid_request_error"),
    (errors.NoProviderAvailable, 503, "service_unavailable_error"),
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
    return status, body(exc.message, kind, param=param, code=exc.code)


def body(message: str, kind: str, *, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_validation_error(exc: ValidationError) -> errors.InvalidRequest:
    """The first problem pydantic found, phrased the way OpenAI names fields."""
    first = exc.errors()[0]
    param = field_path(first["loc"])
    if first["type"] == "missing":
        return errors.InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return errors.InvalidRequest(
        f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value"
    )


def field_path(loc: tuple[int | str, ...]) -> str:
    """`("messages", 0, "content")` → `messages[0].content`; union branch names dropped."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "list[", "str", "int", "float", "bool", "literal[")):
            continue
        else:
            path += f".{part}" if path else part
    return path
