"""Server-sent events: the only place that frames SSE bytes and builds streaming responses.

`EventStreamResponse` guarantees its `on_close` callback runs however the stream ends —
finished, failed, or the client hung up mid-stream — so a disconnect always cancels the
provider's job. Dialects hand it an iterator of `Event`s (a JSON-ready object and its event
name), which it serialises once each as it sends them, then its `trailer` (`DONE` for the
OpenAI dialects) once the iterator ends; already-framed bytes pass through as they are.

While that iterator is silent for `keepalive_s` (waiting in a queue, a long prompt, a slow
provider) the response sends an SSE comment, which every SSE client ignores, so proxies and
load balancers do not drop an idle connection. Keep-alives go only into silences: a frame is
sent the moment it is ready, and frames are never reordered. The headers go out before the
iterator is first asked for anything, so `deferred` can put a whole wait inside a stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

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


class Event(NamedTuple):
    """One server-sent event before framing: its JSON-ready `data` and optional `name`."""

    data: dict[str, Any]
    name: str | None = None

    def encode(self) -> bytes:
        return frame(self.data, event=self.name)


Frame = bytes | Event
"""What a response body yields: an `Event` to frame, or bytes already framed."""


def encoded(item: Frame) -> bytes:
    return item if isinstance(item, bytes) else item.encode()


async def framed(body: AsyncIterator[Frame], trailer: bytes = b"") -> AsyncIterator[bytes]:
    """`body` as the bytes a response sends: each item framed, then `trailer` once `body`
    has ended (not if it failed)."""
    try:
        async for item in body:
            yield encoded(item)
    finally:
        await _close(body)
    if trailer:
        yield trailer


def frame(data: Any, *, event: str | None = None) -> bytes:
    """One SSE event carrying `data` as compact JSON."""
    payload = orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


class KeepAliveStream:
    """`body`'s frames as they come, with `KEEPALIVE` after every `interval_s` of silence.

    A pump task reads `body` ahead into a buffer, and each step hands over everything
    buffered as one chunk: a frame is sent the moment the connection can take it, and the
    frames that arrived while it was busy go out together, in order, in one write (under
    load, one write carries many events instead of one each). The pump stops reading at
    `MAX_AHEAD` buffered frames, so a slow client slows the job (and, through flow control,
    its provider) instead of growing the buffer. Each `Event` is serialised as the pump reads
    it, and `trailer` follows the last one when `body` ends. `aclose` stops the pump and
    closes `body`; the owner must call it.
    """

    MAX_AHEAD = 64

    def __init__(self, body: AsyncIterator[Frame], interval_s: float, trailer: bytes = b"") -> None:
        self._body = body
        self._interval_s = interval_s
        self._trailer = trailer
        self._frames: list[bytes] = []
        self._is_ready = asyncio.Event()
        """Set while frames are buffered or the body has ended."""
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._is_ended = False
        self._error: Exception | None = None
        self._pump: asyncio.Task[None] | None = None

    def __aiter__(self) -> KeepAliveStream:
        return self

    async def __anext__(self) -> bytes:
        if self._pump is None:
            self._pump = asyncio.create_task(self._read_ahead())
        if not self._is_ready.is_set():
            try:
                async with asyncio.timeout(self._interval_s):
                    await self._is_ready.wait()
            except TimeoutError:
                return KEEPALIVE
        if self._frames:
            frames, self._frames = self._frames, []
            if not self._is_ended:
                self._is_ready.clear()
            self._has_room.set()
            return frames[0] if len(frames) == 1 else b"".join(frames)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration

    async def _read_ahead(self) -> None:
        try:
            async for item in self._body:
                self._frames.append(item if isinstance(item, bytes) else item.encode())
                self._is_ready.set()
                if len(self._frames) >= self.MAX_AHEAD:
                    self._has_room.clear()
                    await self._has_room.wait()
            if self._trailer:
                self._frames.append(self._trailer)
        except Exception as exc:  # handed to the response, after the frames before it
            self._error = exc
        finally:
            self._is_ended = True
            self._is_ready.set()

    async def aclose(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            await asyncio.wait({pump})
        await _close(self._body)


async def _close(body: AsyncIterator[Any]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


async def deferred(
    opening: Callable[[], Awaitable[AsyncIterator[Frame]]],
    *,
    on_error: Callable[[errors.MoonflowerError], Frame],
) -> AsyncIterator[Frame]:
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
        body: AsyncIterator[Frame],
        *,
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
        keepalive_s: float | None = KEEPALIVE_S,
        trailer: bytes = b"",
    ) -> None:
        """`keepalive_s` None sends no keep-alives; `trailer` follows the body's last frame."""
        stream: AsyncIterator[bytes] = (
            framed(body, trailer)
            if keepalive_s is None
            else KeepAliveStream(body, keepalive_s, trailer)
        )
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
