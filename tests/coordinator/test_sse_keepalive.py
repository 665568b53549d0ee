"""SSE keep-alives: comments fill silences and only silences, frames keep their order and are
not held back, headers go out before a slow first frame, and a client hanging up closes the
body and leaves no task behind — driven as uvicorn drives an ASGI app, and once over a real
loopback socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.queueing import ModelQueues
from moonflower.settings import CoordinatorSettings
from tests.support.network import free_port

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn announces
    "http_version": "1.1",
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [],
}


def frame(n: int) -> bytes:
    return sse.frame({"n": n})


class Client:
    """The server side of one HTTP exchange: what the app sent and when, and a hang-up."""

    def __init__(self, *, stalls_on: bytes | None = None) -> None:
        """`stalls_on`: a frame whose write never completes, as on a stalled socket."""
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.hangup = asyncio.Event()
        self.stalls_on = stalls_on
        self.is_stalled = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.hangup.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.stalls_on is not None and self.stalls_on in message.get("body", b""):
            self.is_stalled.set()
            await asyncio.Event().wait()
        self.sent.append((self.loop.time() - self.started, message))

    def chunks(self) -> list[bytes]:
        return [m["body"] for _t, m in self.sent if m["type"] == "http.response.body" and m["body"]]

    def frames(self) -> list[bytes]:
        """The events sent, one each (frames ready together share a write)."""
        return [
            event + b"\n\n"
            for chunk in self.chunks()
            if chunk != sse.KEEPALIVE
            for event in chunk.split(b"\n\n")[:-1]
        ]

    def sent_at(self, frame: bytes) -> float:
        return next(t for t, m in self.sent if frame in m.get("body", b""))

    def start_at(self) -> float:
        return next(t for t, m in self.sent if m["type"] == "http.response.start")


class Closed:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


async def serve(response: sse.EventStreamResponse, client: Client) -> None:
    async with asyncio.timeout(5):
        await response(SCOPE, client.receive, client.send)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def paced(schedule: list[tuple[float, int]]) -> AsyncIterator[bytes]:
    """Frame n after sleeping s, for each (s, n)."""
    for pause, n in schedule:
        await asyncio.sleep(pause)
        yield frame(n)


async def test_a_silence_is_filled_with_keepalives() -> None:
    client = Client()
    body = paced([(0, 1), (0.35, 2)])
    await serve(sse.EventStreamResponse(body, on_close=Closed(), keepalive_s=0.1), client)
    chunks = client.chunks()
    assert chunks[0] == frame(1) and chunks[-1] == frame(2)
    assert set(chunks[1:-1]) == {sse.KEEPALIVE}
    assert 2 <= len(chunks) - 2 <= 4
    assert client.sent[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_busy_stream_carries_no_keepalives() -> None:
    client = Client()
    body = paced([(0.01, n) for n in range(30)])
    await serve(sse.EventStreamResponse(body, on_close=Closed(), keepalive_s=0.25), client)
    assert client.chunks() == [frame(n) for n in range(30)]


async def test_frames_keep_their_order_and_are_not_held_back() -> None:
    produced: dict[bytes, float] = {}
    loop = asyncio.get_running_loop()

    async def body() -> AsyncIterator[bytes]:
        for n, pause in enumerate([0, 0.05, 0, 0.23, 0.01, 0, 0.09, 0.15, 0]):
            await asyncio.sleep(pause)
            produced[frame(n)] = loop.time()
            yield frame(n)

    client = Client()
    await serve(sse.EventStreamResponse(body(), on_close=Closed(), keepalive_s=0.1), client)
    assert client.frames() == [frame(n) for n in range(9)]
    assert sse.KEEPALIVE in client.chunks()
    for chunk, at in produced.items():  # sent when ready, not at the next keep-alive tick
        assert client.sent_at(chunk) + client.started - at < 0.05


async def test_frames_ready_together_go_out_in_one_write() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield frame(0)
        await asyncio.sleep(0.05)
        for n in range(1, 6):  # ready at once, as when a provider's events queue up
            yield frame(n)

    client = Client()
    await serve(sse.EventStreamResponse(body(), on_close=Closed(), keepalive_s=1), client)
    assert client.chunks() == [frame(0), b"".join(frame(n) for n in range(1, 6))]


async def test_a_stalled_client_stops_the_reading_ahead() -> None:
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for n in range(1000):
            await asyncio.sleep(0)
            read.append(n)
            yield frame(n)

    client = Client(stalls_on=frame(0))
    response = sse.EventStreamResponse(body(), on_close=Closed(), keepalive_s=1)
    serving = asyncio.create_task(serve(response, client))
    await asyncio.wait_for(client.is_stalled.wait(), 5)
    await until(lambda: len(read) >= sse.KeepAliveStream.MAX_AHEAD)
    await asyncio.sleep(0.05)  # unchecked, the body would be read to its end by now
    assert len(read) <= 2 * sse.KeepAliveStream.MAX_AHEAD
    client.hangup.set()
    await serving


async def test_headers_go_out_before_a_slow_first_frame() -> None:
    client = Client()
    body = paced([(0.5, 1)])
    await serve(sse.EventStreamResponse(body, on_close=Closed(), keepalive_s=0.1), client)
    assert client.start_at() < 0.1
    assert client.chunks()[0] == sse.KEEPALIVE
    assert client.sent_at(sse.KEEPALIVE) < 0.3
    assert client.sent_at(frame(1)) >= 0.5
    assert client.frames() == [frame(1)]


async def test_no_keepalives_when_they_are_turned_off() -> None:
    client = Client()
    body = paced([(0.15, 1)])
    await serve(sse.EventStreamResponse(body, on_close=Closed(), keepalive_s=None), client)
    assert client.chunks() == [frame(1)]


async def test_a_client_hanging_up_closes_the_body_and_leaves_no_task() -> None:
    before = other_tasks()
    body_closed = asyncio.Event()
    never = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield frame(1)
            await never.wait()  # a provider that has gone quiet
            yield frame(2)
        finally:
            body_closed.set()

    client = Client()
    on_close = Closed()
    response = sse.EventStreamResponse(body(), on_close=on_close, keepalive_s=0.05)
    serving = asyncio.create_task(serve(response, client))
    await until(lambda: sse.KEEPALIVE in client.chunks())
    client.hangup.set()
    await serving
    assert body_closed.is_set()
    assert on_close.calls == 1
    assert client.frames() == [frame(1)]
    await asyncio.sleep(0)
    assert other_tasks() <= before


async def test_a_client_hanging_up_mid_write_closes_the_body_at_once() -> None:
    body_closed = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            for n in range(1000):
                if n in (1, 2):  # each in its own write, even on a slow machine
                    await until(lambda n=n: frame(n - 1) in client.frames())  # type: ignore[misc]
                await asyncio.sleep(0.005)
                yield frame(n)
        finally:
            body_closed.set()

    client = Client(stalls_on=frame(2))
    on_close = Closed()
    response = sse.EventStreamResponse(body(), on_close=on_close, keepalive_s=0.05)
    serving = asyncio.create_task(serve(response, client))
    await asyncio.wait_for(client.is_stalled.wait(), 5)  # writing frame 2, which never ends
    client.hangup.set()
    await serving
    assert body_closed.is_set()  # closed by the response, not left for the garbage collector
    assert on_close.calls == 1
    assert client.frames() == [frame(0), frame(1)]


async def test_a_failing_body_still_closes_and_leaves_no_task() -> None:
    before = other_tasks()

    async def body() -> AsyncIterator[bytes]:
        yield frame(1)
        await asyncio.sleep(0.12)
        raise RuntimeError("broken renderer")

    client = Client()
    on_close = Closed()
    with pytest.raises(RuntimeError, match="broken renderer"):
        await serve(sse.EventStreamResponse(body(), on_close=on_close, keepalive_s=0.05), client)
    assert on_close.calls == 1
    assert client.frames() == [frame(1)]
    await asyncio.sleep(0)
    assert other_tasks() <= before


def error_frame(exc: errors.MoonflowerError) -> bytes:
    return sse.frame({"error": exc.code})


async def test_deferred_streams_after_a_wait_with_keepalives_meanwhile() -> None:
    async def opening() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.25)
        return paced([(0, 1), (0, 2)])

    client = Client()
    body = sse.deferred(opening, on_error=error_frame)
    await serve(sse.EventStreamResponse(body, on_close=Closed(), keepalive_s=0.1), client)
    assert client.start_at() < 0.1
    assert client.chunks()[:2] == [sse.KEEPALIVE, sse.KEEPALIVE]
    assert client.frames() == [frame(1), frame(2)]


async def test_deferred_frames_an_error_raised_while_opening() -> None:
    async def opening() -> AsyncIterator[bytes]:
        raise errors.Overloaded(retry_after_s=3)

    client = Client()
    body = sse.deferred(opening, on_error=error_frame)
    await serve(sse.EventStreamResponse(body, on_close=Closed()), client)
    assert client.frames() == [sse.frame({"error": "server_is_overloaded"})]


async def test_hanging_up_while_queued_leaves_the_queue() -> None:
    queues = ModelQueues(max_waiting=4, max_wait_s=30)
    before = other_tasks()

    async def opening() -> AsyncIterator[bytes]:
        await queues.wait_turn("m", lambda: None)  # every provider stays busy
        return paced([(0, 1)])

    client = Client()
    body = sse.deferred(opening, on_error=error_frame)
    response = sse.EventStreamResponse(body, on_close=Closed(), keepalive_s=0.05)
    serving = asyncio.create_task(serve(response, client))
    await until(lambda: queues.waiting("m") > 0 and sse.KEEPALIVE in client.chunks())
    client.hangup.set()
    await serving
    assert queues.waiting("m") == 0
    assert set(client.chunks()) == {sse.KEEPALIVE}
    await asyncio.sleep(0)
    assert other_tasks() <= before


async def test_keepalives_reach_a_real_client_over_loopback() -> None:
    """Headers arrive at once, comments while the first frame is awaited; an SSE client
    reading the stream sees only the frames."""

    async def events(request: Request) -> Response:
        async def opening() -> AsyncIterator[bytes]:
            await asyncio.sleep(0.4)
            return paced([(0, 1), (0.25, 2)])

        body = sse.deferred(opening, on_error=error_frame)
        return sse.EventStreamResponse(body, on_close=Closed(), keepalive_s=0.1)

    port = free_port()
    app = Starlette(routes=[Route("/events", events)])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
                http.stream("GET", "/events") as response,
            ):
                headers_after = loop.time()
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            sent = loop.time()
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert headers_after < sent - 0.5
    assert raw.count(sse.KEEPALIVE) >= 4
    data = [line for line in raw.split(b"\n") if line and not line.startswith(b":")]
    assert data == [b'data: {"n":1}', b'data: {"n":2}']


def test_keepalive_is_an_sse_comment() -> None:
    assert sse.KEEPALIVE.startswith(b":") and sse.KEEPALIVE.endswith(b"\n\n")
    assert sse.KEEPALIVE_S == CoordinatorSettings().sse_keepalive_s == 15.0
