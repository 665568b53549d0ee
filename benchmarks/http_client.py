"""A lean HTTP/1.1 client for the load generators: a benchmark instrument, never used
outside benchmarks/.

The load generator shares the machine's cores with what it measures, so it must cost as
little per streamed chunk as possible: httpx parses every byte with h11 in Python and
costs several times more per chunk than this. One `Connection` is one keep-alive socket
to a loopback server (reopened when the server closes it), sending one request at a time;
it understands exactly what the benchmark servers answer: a status line, headers, and a
body with `Content-Length` or `Transfer-Encoding: chunked`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import orjson

READ_LIMIT = 1 << 20

T = TypeVar("T")


class HTTPFailure(Exception):
    """The server answered with something other than 200, or broke the exchange."""


@dataclass
class Response:
    status: int
    is_chunked: bool
    length: int | None
    closes: bool


class Connection:
    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._host_header = f"{self._host}:{self._port}".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def post_json(self, path: str, body: object, headers: dict[str, str]) -> bytes:
        """The whole body of a 200 answer to a JSON POST; raises `HTTPFailure` otherwise."""
        reader, response = await self._send(path, body, headers)
        content = b"".join([piece async for piece in self._body(reader, response)])
        if response.status != 200:
            raise HTTPFailure(f"HTTP {response.status}: {content[:200]!r}")
        return content

    async def stream_events(
        self, path: str, body: object, headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        """The `data:` payloads of a 200 server-sent-event answer, as they arrive."""
        reader, response = await self._send(path, body, headers)
        if response.status != 200:
            content = b"".join([piece async for piece in self._body(reader, response)])
            raise HTTPFailure(f"HTTP {response.status}: {content[:200]!r}")
        pending = b""
        async for piece in self._body(reader, response):
            pending += piece
            while (end := pending.find(b"\n\n")) != -1:
                event, pending = pending[:end], pending[end + 2 :]
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        yield line[6:]

    async def _send(
        self, path: str, body: object, headers: dict[str, str]
    ) -> tuple[asyncio.StreamReader, Response]:
        payload = orjson.dumps(body)
        head = [
            b"POST " + path.encode() + b" HTTP/1.1",
            b"Host: " + self._host_header,
            b"Content-Type: application/json",
            b"Content-Length: " + str(len(payload)).encode(),
            *(f"{name}: {value}".encode() for name, value in headers.items()),
        ]
        request = b"\r\n".join(head) + b"\r\n\r\n" + payload
        for attempt in range(2):  # a kept-alive socket the server closed: reopen once
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self._host, self._port, limit=READ_LIMIT
                )
            assert self._reader is not None
            try:
                self._writer.write(request)
                return self._reader, await self._head(self._reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _head(self, reader: asyncio.StreamReader) -> Response:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                fields[name.strip().lower()] = value.strip().lower()
        length = fields.get("content-length")
        return Response(
            status=status,
            is_chunked="chunked" in fields.get("transfer-encoding", ""),
            length=int(length) if length is not None else None,
            closes=fields.get("connection") == "close",
        )

    async def _body(self, reader: asyncio.StreamReader, response: Response) -> AsyncIterator[bytes]:
        try:
            if response.is_chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    yield (await reader.readexactly(size + 2))[:-2]
            elif response.length is not None:
                yield await reader.readexactly(response.length)
            else:
                yield await reader.read()
                response.closes = True
        except BaseException:
            await self.close()  # the exchange did not finish: the socket is unusable
            raise
        if response.closes:
            await self.close()


REQUEST_FAILURES = (OSError, HTTPFailure, RuntimeError, TimeoutError, ValueError)
"""What one request of a load may fail with (`once` raises `RuntimeError` on a wrong
answer) without stopping the load."""


async def closed_loop(
    base_url: str,
    concurrency: int,
    requests: int,
    once: Callable[[Connection], Awaitable[T]],
) -> tuple[list[T], list[str], float]:
    """`requests` calls of `once`, `concurrency` at a time, each worker sending its next as
    soon as its last ends, on its own kept-alive connection (reopened after a failure).
    Returns the results, the failures (`Type: message`) and the wall time in seconds."""
    results: list[T] = []
    failures: list[str] = []
    remaining = iter(range(requests))

    async def worker() -> None:
        connection = Connection(base_url)
        try:
            for _ in remaining:
                try:
                    results.append(await once(connection))
                except REQUEST_FAILURES as exc:
                    await connection.close()
                    failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            await connection.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, failures, time.perf_counter() - t0
