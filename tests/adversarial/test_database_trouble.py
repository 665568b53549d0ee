"""A ledger database that is locked or down (item 18): a real coordinator process answers
503 with Retry-After in OpenAI's shape and 529 `overloaded_error` in Anthropic's, within its
time bound, instead of a 500 after ten seconds; `/health` keeps answering; once the database is
back the same request succeeds and the books balance.

On SQLite another process holds the write lock (`BEGIN IMMEDIATE` on the file, as a backup
or a second coordinator would). On PostgreSQL the coordinator reaches its server through a
loopback relay that the test takes down (open connections cut, new ones refused, as when the
server stops) and brings back on the same port; a table lock held by another session shows the
statement time-out at work.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url, text

from moonflower.cli.accounts import parse_usd
from tests.adversarial.conftest import (
    CONSUMER_CREDIT_USD,
    PRICES,
    TEST_SETTINGS,
    Books,
    Consumer,
    EnrolledProvider,
    Liveness,
    RunningCoordinator,
    start_process,
)
from tests.support.network import LocalNetwork
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai
from tests.support.postgres import PostgresServer
from tests.support.scripted_provider import ScriptedProvider

BOUND_S = 1
"""The coordinators' `DATABASE_TIMEOUT_S` here."""
WITHIN_S = 2 * BOUND_S + 3
"""How long a refused request may take: a turn at the one writer connection and a wait for
the lock, each bounded, plus what a shared, busy test machine adds."""
WORDS = ["fine", ",", " thanks"]

Enroll = Callable[[str], Awaitable[EnrolledProvider]]


# --- the ways in ---------------------------------------------------------------------------


async def chat(consumer: Consumer, *, stream: bool = False) -> httpx.Response:
    return await consumer.chat("How are you?", stream=stream)


async def message(consumer: Consumer) -> httpx.Response:
    body = {
        "model": "scripted",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "How are you?"}],
    }
    return await consumer.client.post("/v1/messages", json=body)


def cost_of(response: httpx.Response) -> int:
    """What a successful answer costs at the test prices, from the usage it reports."""
    usage = response.json()["usage"]
    if "input_tokens" in usage:
        return PRICES.cost(usage["input_tokens"], usage["output_tokens"])
    return PRICES.cost(usage["prompt_tokens"], usage["completion_tokens"])


async def timed(call: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = await call
    return response, time.monotonic() - began


def assert_openai_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert_valid_openai("ErrorResponse", body)
    assert body["error"]["type"] == "service_unavailable_error"
    assert body["error"]["code"] == "store_unavailable"
    assert elapsed < WITHIN_S


def assert_anthropic_overloaded(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 529, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert_valid_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "overloaded_error"
    assert elapsed < WITHIN_S


async def assert_refused_while_down(
    running: RunningCoordinator, warm: Consumer, cold: Consumer
) -> None:
    """Every way in is refused in its dialect within the bound while `/health` answers.

    `warm` has been served before, so its key is remembered and its known credit lets its
    job go to the provider while its hold is written; `cold` authenticates from the
    database and must wait for its first hold."""
    for consumer in (warm, cold):
        assert_openai_unavailable(*await timed(chat(consumer)))
        assert_openai_unavailable(*await timed(chat(consumer, stream=True)))
        assert_anthropic_overloaded(*await timed(message(consumer)))
        health, elapsed = await timed(running.health(timeout=2))
        assert health.status_code == 200 and elapsed < 2


@asynccontextmanager
async def serving_every_job(provider: ScriptedProvider) -> AsyncIterator[list[str]]:
    """Serve every job the provider is sent honestly, for as long as the block runs; yields
    the ids of the jobs it was sent. A job the coordinator gives up on is simply dropped."""
    served: list[str] = []
    answering: set[asyncio.Task[None]] = set()

    async def answer(job: Any) -> None:
        with contextlib.suppress(Exception):
            await job.serve_honestly(WORDS)

    async def take() -> None:
        while True:
            job = await provider.next_job(timeout=3600)
            served.append(job.job_id)
            task = asyncio.create_task(answer(job))
            answering.add(task)
            task.add_done_callback(answering.discard)

    taking = asyncio.create_task(take())
    try:
        yield served
    finally:
        taking.cancel()
        for task in list(answering):
            task.cancel()
        await asyncio.gather(taking, *answering, return_exceptions=True)


async def check_the_books(
    books: Books, consumers: dict[str, int], provider: str, provider_before: int
) -> None:
    """Each consumer paid exactly what its successful answers cost (none of the refused
    ones), the provider earned their share, nothing is held and the books balance."""
    await books.wait_settled(timeout=30)
    paid = 0
    for name, cost in consumers.items():
        spent = parse_usd(CONSUMER_CREDIT_USD) - await books.balance(name)
        assert spent == cost, (name, spent, cost)
        paid += cost
    earned = await books.balance(provider) - provider_before
    fees = sum(PRICES.fee(cost) for cost in consumers.values())
    assert earned == paid - fees
    assert await books.open_holds() == []
    await books.assert_balanced()


# --- SQLite ----------------------------------------------------------------------------------


@contextmanager
def write_lock_held(database_url: str) -> Iterator[None]:
    """Another process's write transaction on the coordinator's SQLite file."""
    database = make_url(database_url).database
    assert database is not None
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.mark.coordinator_settings(DATABASE_TIMEOUT_S=str(BOUND_S))
async def test_a_locked_sqlite_ledger_is_a_503_or_529_with_retry_after_and_then_heals(
    coordinator: RunningCoordinator,
    books: Books,
    new_consumer: Callable[..., Awaitable[Consumer]],
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("honest")
    warm, cold = await new_consumer("warm"), await new_consumer("cold")
    costs = {"warm": 0, "cold": 0}
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(coordinator.base_url)
        provider_before = await books.balance("honest")
        async with serving_every_job(provider):
            first = await chat(warm)
            assert first.status_code == 200, first.text
            costs["warm"] += cost_of(first)

            with write_lock_held(coordinator.database_url):
                await assert_refused_while_down(coordinator, warm, cold)

            for name, consumer in (("warm", warm), ("cold", cold)):
                again = await chat(consumer)
                assert again.status_code == 200, again.text
                assert again.json()["choices"][0]["message"]["content"] == "".join(WORDS)
                costs[name] += cost_of(again)
                answered = await message(consumer)
                assert answered.status_code == 200, answered.text
                costs[name] += cost_of(answered)
        await check_the_books(books, costs, "honest", provider_before)
    await assert_live()
    assert "unhandled error" not in coordinator.log()


# --- PostgreSQL ------------------------------------------------------------------------------


@dataclass(eq=False)
class Relay:
    """A loopback TCP relay in front of PostgreSQL that can go down — its open connections
    cut, new ones refused, as when the server stops — and come back on the same port."""

    target_port: int
    port: int = 0
    _server: asyncio.Server | None = None
    _streams: set[asyncio.StreamWriter] = field(default_factory=set)
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    async def up(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        server, self._server = self._server, None
        server.close()  # refuse new connections
        for writer in list(self._streams):
            writer.transport.abort()  # and cut the open ones
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await server.wait_closed()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._streams |= {writer, upstream_writer}
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            self._streams.discard(sink)


@pytest.fixture
async def relay(postgres_server: PostgresServer) -> AsyncIterator[Relay]:
    relay = Relay(postgres_server.port)
    await relay.up()
    try:
        yield relay
    finally:
        if relay.is_up:
            await relay.down()


@pytest.fixture
async def relayed_coordinator(
    postgres_server: PostgresServer, relay: Relay, tmp_path: Path
) -> AsyncIterator[RunningCoordinator]:
    """A coordinator process whose PostgreSQL is reached through `relay`; the books are
    read directly. Started and stopped off the event loop, which must keep relaying."""
    direct = postgres_server.create_database()
    through_relay = make_url(direct).set(port=relay.port).render_as_string(hide_password=False)
    settings = {**TEST_SETTINGS, "DATABASE_TIMEOUT_S": str(BOUND_S)}
    network = LocalNetwork(
        tmp_path / "relayed", database_url=through_relay, log_level="info", settings=settings
    )
    try:
        await asyncio.to_thread(start_process, network)
        yield RunningCoordinator(network, direct, dict(settings))
    finally:
        await asyncio.to_thread(network.stop)


@pytest.fixture
def running(request: pytest.FixtureRequest) -> RunningCoordinator:
    """This module's coordinators: the relayed one when a test asks for it."""
    for name in ("relayed_coordinator", "pg_coordinator", "coordinator"):
        if name in request.fixturenames:
            coordinator: RunningCoordinator = request.getfixturevalue(name)
            return coordinator
    coordinator = request.getfixturevalue("coordinator")
    return coordinator


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_postgresql_server_gone_is_a_503_or_529_with_retry_after_and_then_heals(
    relayed_coordinator: RunningCoordinator,
    relay: Relay,
    books: Books,
    new_consumer: Callable[..., Awaitable[Consumer]],
    provider_token: Enroll,
) -> None:
    running = relayed_coordinator
    enrolled = await provider_token("honest")
    warm, cold = await new_consumer("warm"), await new_consumer("cold")
    costs = {"warm": 0, "cold": 0}
    async with ScriptedProvider.connect(running.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(running.base_url)
        provider_before = await books.balance("honest")
        async with serving_every_job(provider):
            first = await chat(warm)
            assert first.status_code == 200, first.text
            costs["warm"] += cost_of(first)

            await relay.down()
            await assert_refused_while_down(running, warm, cold)
            await relay.up()

            for name, consumer in (("warm", warm), ("cold", cold)):
                again = await chat(consumer)
                assert again.status_code == 200, again.text
                costs[name] += cost_of(again)
                answered = await message(consumer)
                assert answered.status_code == 200, answered.text
                costs[name] += cost_of(answered)
        await check_the_books(books, costs, "honest", provider_before)
    assert "unhandled error" not in running.log()


@pytest.mark.coordinator_settings(DATABASE_TIMEOUT_S=str(BOUND_S))
@pytest.mark.postgres
async def test_a_postgresql_table_locked_by_another_session_times_out_as_a_503(
    pg_coordinator: RunningCoordinator,
    books: Books,
    new_consumer: Callable[..., Awaitable[Consumer]],
    provider_token: Enroll,
) -> None:
    enrolled = await provider_token("honest")
    consumer = await new_consumer("consumer")
    async with ScriptedProvider.connect(pg_coordinator.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(pg_coordinator.base_url)
        provider_before = await books.balance("honest")
        async with serving_every_job(provider):
            async with books.db.engine.connect() as locker:
                await locker.execute(text("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE"))
                assert_openai_unavailable(*await timed(chat(consumer)))
                assert_anthropic_overloaded(*await timed(message(consumer)))
                await locker.rollback()
            answered = await chat(consumer)
            assert answered.status_code == 200, answered.text
        await check_the_books(books, {"consumer": cost_of(answered)}, "honest", provider_before)
    assert "unhandled error" not in pg_coordinator.log()
