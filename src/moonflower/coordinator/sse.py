"""Server-sent events: the only place that frames SSE bytes and builds streaming responses.

`EventStreamResponse` guarantees its `on_close` callback runs however the stream ends —
finished, failed, or the client hung up mid-stream — so a disconnect always cancels the
provider's job. Dialects hand it an iterator of already-framed bytes.

While that iterator is silent for `keepalive_s` (waiting in a queue, a long prompt, a slow
provider) the response sends an SSE comment, which every SSE client ignores, so proxies and
load balancers do not drop an idle connection. Keep-alives go only into silences: a frame is
sent the moment it is ready, and frames are never reordered. The headers go out before the
iterator is first asked for anything, so `deferred` can put a whole wait inside a stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from moonflower import errors

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_S = 15.0
"""Default silence after which a stream sends `KEEPALIVE`."""

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


class KeepAliveStream:
    """`body`'s frames as they come, with `KEEPALIVE` after every `interval_s` of silence.

    The next frame is awaited in its own task, which a keep-alive does not disturb; `aclose`
    cancels that task, waits for it, and closes `body`. The owner must call `aclose`.
    """

    def __init__(self, body: AsyncIterator[bytes], interval_s: float) -> None:
        self._body = body
        self._interval_s = interval_s
        self._next: asyncio.Task[bytes | None] | None = None

    def __aiter__(self) -> KeepAliveStream:
        return self

    async def __anext__(self) -> bytes:
        if self._next is None:
            self._next = asyncio.create_task(_next_frame(self._body))
        done, _ = await asyncio.wait({self._next}, timeout=self._interval_s)
        if not done:
            return KEEPALIVE
        task, self._next = self._next, None
        frame = task.result()
        if frame is None:
            raise StopAsyncIteration
        return frame

    async def aclose(self) -> None:
        task, self._next = self._next, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: the stream is over either way
        await _close(self._body)


async def _next_frame(body: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(body)
    except StopAsyncIteration:
        return None


async def _close(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


async def deferred(
    opening: Callable[[], Awaitable[AsyncIterator[bytes]]],
    *,
    on_error: Callable[[errors.MoonflowerError], bytes],
) -> AsyncIterator[bytes]:
    """A body whose frames come from an iterator that takes a while to get (`opening` may
    wait in a model's queue, then start the job). Given to `EventStreamResponse`, the
    headers go out at once and keep-alives flow during the wait. A domain error while
    opening can no longer become an HTTP status, so `on_error` frames it in the dialect."""
    try:
        frames = await opening()
    except errors.MoonflowerError as exc:
        yield on_error(exc)
        return
    try:
        async for item in frames:
            yield item
    finally:
        await _close(frames)


class EventStreamResponse(StreamingResponse):
    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
        keepalive_s: float | None = KEEPALIVE_S,
    ) -> None:
        """`keepalive_s` None sends no keep-alives."""
        stream = body if keepalive_s is None else KeepAliveStream(body, keepalive_s)
        super().__init__(
            stream, media_type="text/event-stream", headers={**HEADERS, **(headers or {})}
        )
        self._stream = stream
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await _close(self._stream)
            finally:
                await self._on_close()
