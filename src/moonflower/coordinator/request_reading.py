"""What the coordinator reads from an HTTP request before a dialect parses it: the JSON
body, refused past `MAX_BODY_BYTES`, and the trust floor the caller may ask for in the
`MIN_TRUST_HEADER` header.

Dialect-neutral: errors are raised as domain errors, which `error_response` renders in the
caller's dialect. The middlewares that run before the app (the sealed transport, CORS) take
their limits and header names from here. It must not know jobs, providers or wire shapes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from moonflower import errors
from moonflower.coordinator.trust import TrustLevel

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Larger bodies are refused before parsing; a job must also fit one wire frame."""


async def read_json(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    body = request.state.body = b"".join(chunks)  # as read, should it be forwarded
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.InvalidRequest(
            "We could not parse the JSON body of your request: it must be a valid JSON object.",
            param=None,
            code="invalid_json",
        ) from None


def _too_large() -> errors.BodyTooLarge:
    return errors.BodyTooLarge(
        f"The request body is larger than the {MAX_BODY_BYTES // (1024 * 1024)} MiB limit.",
        param=None,
    )


MIN_TRUST_HEADER = "x-moonflower-min-trust"


def trust_floor(request: Request) -> TrustLevel | None:
    """The trust level the caller asks for; it can only raise the coordinator's floor."""
    asked = request.headers.get(MIN_TRUST_HEADER)
    if asked is None:
        return None
    try:
        return TrustLevel.parse(asked)
    except ValueError:
        raise errors.InvalidRequest(
            f"The {MIN_TRUST_HEADER} header must be none, self_signed or hardware.",
            param=MIN_TRUST_HEADER,
        ) from None
