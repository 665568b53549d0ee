"""Server-sent events: the only place that frames SSE bytes and builds streaming responses.

`EventStreamResponse` guarantees its `on_close` callback runs however the stream ends —
finished, failed, or the client hung up mid-stream — so a disconnect always cancels the
provider's job. Dialects hand it an iterator of already-framed bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"

HEADERS = {
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


def frame(data: Any, *, event: str | None = None) -> bytes:
    """One SSE event carrying `data` as compact JSON."""
    payload = orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


class EventStreamResponse(StreamingResponse):
    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={**HEADERS, **(headers or {})}
        )
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
            await self._on_close()
