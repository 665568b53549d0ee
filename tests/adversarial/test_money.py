"""Money: a provider is a stranger and a consumer may be hostile, so the coordinator pays and
charges only for what it checked itself.

Played over the real protocol against a real coordinator process on a real database: lying
counts and receipts, coordinator-made time-outs, consumers that hang up or stop reading,
leases outliving their first term, a locked database at settlement, whole answers that fail
under SDK retries, a consumer leaving before any output, a liar's claims against routing, and
a provider flooding its window or `max_tokens`. Each test checks the money (the consumer paid
at most the price of what reached it; an honest provider earned exactly its share; the books
balance; no hold is left), the trust outcome and that the coordinator keeps serving others.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy import text as sql

from moonflower.generation import Failed, Started, TextDelta
from moonflower.ledger.tables import Job
from tests.adversarial.conftest import (
    PRICES,
    Books,
    Consumer,
    EnrolledProvider,
    Liveness,
    RunningCoordinator,
)
from tests.adversarial.test_wire_hygiene import (
    CLOSE_PROTOCOL_ERROR,
    assert_clean_log,
    assert_out_of_routing,
    charged,
    stream_chat,
)
from tests.support.scripted_provider import (
    ScriptedJob,
    ScriptedProvider,
    is_routable_entry,
    provider_entry,
)

Enroll = Callable[[str], Awaitable[EnrolledProvider]]

STREAM_BODY: dict[str, Any] = {
    "model": "scripted",
    "messages": [{"role": "user", "content": "Hello"}],
    "stream": True,
}


# --- helpers ---------------------------------------------------------------------------------


async def pricing(running: RunningCoordinator) -> dict[str, Any]:
    """The coordinator's own prices for the scripted model (GET /v1/pricing)."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{running.base_url}/v1/pricing")
    response.raise_for_status()
    return dict(response.json())


def cost_of(job: Job) -> int:
    return PRICES.cost(job.billed_prompt_tokens, job.billed_completion_tokens)


async def scripted_jobs(books: Books) -> list[Job]:
    return [job for job in await books.jobs() if job.model == "scripted"]


async def assert_money(
    books: Books,
    consumer: Consumer,
    provider: str,
    before: dict[str, int],
    *,
    delivered_tokens: int,
    provider_honest: bool,
) -> list[Job]:
    """Once every hold is closed: the consumer paid exactly the price of what was billed,
    billed completions never exceed `delivered_tokens`, an honest provider earned exactly its
    share of that (a dishonest one nothing), and the books balance."""
    await books.wait_settled()
    jobs = await scripted_jobs(books)
    billed = sum(cost_of(job) for job in jobs)
    for job in jobs:
        assert 0 <= job.billed_completion_tokens <= delivered_tokens, job
        assert 0 <= job.billed_prompt_tokens < 10_000, job
        assert job.charged_micro_usd == cost_of(job), job
    assert sum(job.billed_completion_tokens for job in jobs) <= delivered_tokens
    assert await charged(books, consumer, before) == billed
    earned = await books.balance(provider) - before[provider]
    if provider_honest:
        assert earned == sum(cost_of(job) - PRICES.fee(cost_of(job)) for job in jobs)
    else:
        assert earned == 0
    assert await books.open_holds() == []
    await books.assert_balanced()
    return jobs


async def assert_trusted(running: RunningCoordinator, provider: ScriptedProvider) -> None:
    entry = await provider_entry(running.base_url, provider.provider_id)
    assert is_routable_entry(entry), entry


async def open_stream(consumer: Consumer, body: dict[str, Any] | None = None) -> Any:
    return consumer.client.stream("POST", "/v1/chat/completions", json=body or STREAM_BODY)


# --- 1. provider-reported counts -------------------------------------------------------------


async def test_the_prices_in_force_are_the_ones_the_tests_compute_with(
    coordinator: RunningCoordinator,
) -> None:
    """Every sum below is computed with `PRICES`: they are the coordinator's own."""
    prices = await pricing(coordinator)
    assert prices["default"]["input_price"] == PRICES.input
    assert prices["default"]["output_price"] == PRICES.output
    assert prices["minimum_charge_micro_usd"] == PRICES.minimum
    assert prices["platform_fee_percent"] == PRICES.fee_bps / 100


async def test_a_delta_claiming_thousands_of_tokens_for_one_byte_is_paid_for_one(
    each_coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("inflater")
    before = await books.balances()
    async with ScriptedProvider.connect(each_coordinator.base_url, token=enrolled.token) as liar:
        await liar.wait_routable(each_coordinator.base_url)

        async def lie() -> None:
            job = await liar.next_job()
            await job.started(5)
            await job.text("x", 4000)  # one byte cannot hold 4000 tokens
            await job.finish("stop")
            await job.receipt()  # honest about its own claims: the tally matches them
            await assert_live()

        (status, text, _), _ = await asyncio.gather(stream_chat(consumer), lie())
        assert (status, text) == (200, "x")
        [job] = await assert_money(
            books, consumer, "inflater", before, delivered_tokens=1, provider_honest=True
        )
        assert job.billed_completion_tokens == 1
        # Far below the hold: a prompt bound and thousands of completion tokens.
        assert job.charged_micro_usd <= PRICES.cost(job.billed_prompt_tokens, 1)
    await assert_live()
    assert_clean_log(each_coordinator)


async def test_a_huge_started_prompt_count_is_never_billed_as_claimed(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("prompt-liar")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as liar:
        await liar.wait_routable(coordinator.base_url)

        async def lie() -> None:
            job = await liar.next_job()
            await job.started(1_000_000)  # a five-byte prompt
            await job.text("one")
            await job.finish("stop")
            await job.receipt()
            await assert_live()

        (status, _, _), _ = await asyncio.gather(stream_chat(consumer), lie())
        assert status == 502, status
        assert await liar.closed() == CLOSE_PROTOCOL_ERROR  # longer than the model's context
        await books.wait_settled()
        jobs = await scripted_jobs(books)
        for job in jobs:
            assert job.billed_prompt_tokens < 10_000, job
            assert job.billed_completion_tokens <= 1, job
        assert await charged(books, consumer, before) <= PRICES.cost(10_000, 1)
        assert await books.balance("prompt-liar") - before["prompt-liar"] <= PRICES.cost(10_000, 1)
        assert await books.open_holds() == []
        await books.assert_balanced()
        assert await charged(books, consumer, before) == 0
        assert await books.balance("prompt-liar") == before["prompt-liar"]
    await assert_out_of_routing(coordinator, liar, enrolled)
    await assert_live()
    assert_clean_log(coordinator)


NEGATIVE = {
    "negative-delta": [Started(5), TextDelta("one", tokens=1), TextDelta(" two", tokens=-7)],
    "negative-prompt": [Started(-5), TextDelta("one", tokens=1)],
}


@pytest.mark.parametrize("events", NEGATIVE.values(), ids=NEGATIVE.keys())
async def test_negative_counts_cut_the_provider_off_unpaid(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
    events: list[Any],
) -> None:
    enrolled = await provider_token("negative")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as liar:
        await liar.wait_routable(coordinator.base_url)

        async def lie() -> None:
            job = await liar.next_job()
            for event in events:
                await job.event(event)

        _, _ = await asyncio.gather(stream_chat(consumer), lie())
        assert await liar.closed() == CLOSE_PROTOCOL_ERROR
        await assert_money(
            books, consumer, "negative", before, delivered_tokens=1, provider_honest=False
        )
    await assert_out_of_routing(coordinator, liar, enrolled)
    await assert_live()


async def test_a_receipt_with_other_counts_earns_nothing_and_untrusts(
    each_coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("forger")
    before = await books.balances()
    async with ScriptedProvider.connect(each_coordinator.base_url, token=enrolled.token) as liar:
        await liar.wait_routable(each_coordinator.base_url)

        async def lie() -> None:
            job = await liar.next_job()
            await job.started(5)
            await job.text("one")
            await job.text(" two")
            await job.finish("stop")
            await job.receipt(completion_tokens=2000, prompt_tokens=900)

        (_, text, _), _ = await asyncio.gather(stream_chat(consumer), lie())
        assert text == "one two"
        await assert_money(
            books, consumer, "forger", before, delivered_tokens=2, provider_honest=False
        )
        assert await charged(books, consumer, before) == 0
    await assert_out_of_routing(each_coordinator, liar, enrolled)
    await assert_live()
    assert_clean_log(each_coordinator)


# --- 3. an idle time-out the coordinator makes -----------------------------------------------


@pytest.mark.coordinator_settings(IDLE_TIMEOUT_S="1")
async def test_an_idle_time_out_cancels_first_and_pays_the_honest_provider_what_it_relayed(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("slow")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as honest:
        await honest.wait_routable(coordinator.base_url)

        async def go_silent() -> None:
            job = await honest.next_job()
            await job.started(5)
            for word in ("a", " b", " c"):
                await job.text(word)
            await job.wait_cancelled(timeout=10)  # silent until the coordinator says stop
            await job.finish("cancelled")
            await job.receipt()

        (status, text, _), _ = await asyncio.gather(stream_chat(consumer), go_silent())
        assert (status, text) == (200, "a b c")
        [job] = await assert_money(
            books, consumer, "slow", before, delivered_tokens=3, provider_honest=True
        )
        assert job.billed_completion_tokens == 3
        assert await books.balance("slow") > before["slow"]
        await assert_trusted(coordinator, honest)
    await assert_live()
    assert_clean_log(coordinator)


# --- 4. a consumer hanging up while the receipt is awaited -------------------------------------


async def test_a_consumer_hanging_up_while_the_receipt_is_awaited_never_untrusts(
    each_coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("honest")
    before = await books.balances()
    async with ScriptedProvider.connect(each_coordinator.base_url, token=enrolled.token) as honest:
        await honest.wait_routable(each_coordinator.base_url)

        async def answer() -> ScriptedJob:
            job = await honest.next_job()
            await job.started(5)
            await job.text("one")
            await job.text(" two")
            await job.finish("stop")
            return job  # the receipt is held back

        answering = asyncio.create_task(answer())
        async with await open_stream(consumer) as stream:
            job = await answering
            lines = stream.aiter_lines()
            async with asyncio.timeout(10):
                while "two" not in await anext(lines):
                    pass
        # The consumer is gone; only now does the receipt come.
        await job.receipt()
        await assert_money(
            books, consumer, "honest", before, delivered_tokens=2, provider_honest=True
        )
        await assert_trusted(each_coordinator, honest)
        await assert_live()
    assert_clean_log(each_coordinator)


async def test_a_consumer_hanging_up_mid_stream_never_untrusts_even_without_a_receipt(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("honest")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as honest:
        await honest.wait_routable(coordinator.base_url)

        async def begin() -> ScriptedJob:
            job = await honest.next_job()
            await job.started(5)
            await job.text("one")
            await job.text(" two")
            return job

        answering = asyncio.create_task(begin())
        async with await open_stream(consumer) as stream:
            job = await answering
            lines = stream.aiter_lines()
            async with asyncio.timeout(10):
                while "two" not in await anext(lines):
                    pass
        await job.wait_cancelled()  # the hang-up reaches the provider as a cancel
        await job.finish("cancelled")  # and its receipt is lost on the way
        await assert_money(
            books, consumer, "honest", before, delivered_tokens=2, provider_honest=True
        )
        assert await books.balance("honest") > before["honest"]
        await assert_trusted(coordinator, honest)
        await assert_live()
    assert_clean_log(coordinator)


# --- 8. a consumer leaving before the first output ---------------------------------------------


async def test_a_consumer_leaving_before_the_first_output_is_charged_nothing(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("honest")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as honest:
        await honest.wait_routable(coordinator.base_url)
        asking = asyncio.create_task(stream_chat(consumer))
        job = await honest.next_job()
        await job.started(5)  # the prompt is read, no output yet
        asking.cancel()  # the consumer hangs up
        with contextlib.suppress(asyncio.CancelledError):
            await asking
        await job.wait_cancelled()
        await job.text("late")  # generated until the cancel arrived
        await job.finish("cancelled")
        await job.receipt()
        await assert_money(
            books, consumer, "honest", before, delivered_tokens=0, provider_honest=True
        )
        assert await charged(books, consumer, before) == 0
        await assert_trusted(coordinator, honest)
    await assert_live()
    assert_clean_log(coordinator)


# --- 7. a whole answer that fails after some tokens --------------------------------------------


async def test_a_whole_answer_failing_after_some_tokens_is_not_charged_even_under_sdk_retries(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    from openai import APIStatusError, AsyncOpenAI

    enrolled = await provider_token("flaky")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as flaky:
        await flaky.wait_routable(coordinator.base_url)

        # Without retries: an error status, nothing charged.
        async def fail_once() -> None:
            job = await flaky.next_job()
            await job.started(5)
            await job.text("one")
            await job.text(" two")
            await job.event(Failed(code="engine_error", message="out of memory"))
            await job.receipt()

        response, _ = await asyncio.gather(consumer.chat(), fail_once())
        assert 400 <= response.status_code < 600 and response.status_code != 500, response.text
        await books.wait_settled()
        assert await charged(books, consumer, before) == 0

        # Under the SDK's retries: every attempt fails after tokens; not one is charged.
        sdk = AsyncOpenAI(
            api_key=consumer.key, base_url=f"{coordinator.base_url}/v1", max_retries=2
        )
        attempts = 0

        async def fail_each() -> None:
            nonlocal attempts
            for _ in range(3):
                job = await flaky.next_job(timeout=20)
                attempts += 1
                await job.started(5)
                await job.text("one")
                await job.event(Failed(code="engine_error", message="out of memory"))
                await job.receipt()

        async def ask() -> None:
            with pytest.raises(APIStatusError):
                await sdk.chat.completions.create(
                    model="scripted", messages=[{"role": "user", "content": "Hello"}]
                )

        await asyncio.gather(ask(), fail_each())
        assert attempts == 3
        await books.wait_settled()
        assert await charged(books, consumer, before) == 0

        # A retry that succeeds is billed once, for itself alone.
        async def fail_then_serve() -> None:
            job = await flaky.next_job(timeout=20)
            await job.started(5)
            await job.text("one")
            await job.event(Failed(code="engine_error", message="out of memory"))
            await job.receipt()
            job = await flaky.next_job(timeout=20)
            await job.serve_honestly(["fine", " now"])

        async def ask_again() -> Any:
            return await sdk.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "Hello"}]
            )

        completion, _ = await asyncio.gather(ask_again(), fail_then_serve())
        assert completion.choices[0].message.content == "fine now"
        await sdk.close()
        jobs = await assert_money(
            books, consumer, "flaky", before, delivered_tokens=2, provider_honest=True
        )
        assert [job.billed_completion_tokens for job in jobs if job.charged_micro_usd] == [2]
    await assert_live()
    assert_clean_log(coordinator)


# --- 14. the flow-control window and max_tokens -------------------------------------------------


def rss_bytes(running: RunningCoordinator) -> int:
    assert running.network.coordinator is not None
    pid = running.network.coordinator.popen.pid
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_provider_flooding_past_its_window_is_cut_off_untrusted_and_held_in_bounds(
    each_coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("flooder")
    before = await books.balances()
    rss_before = rss_bytes(each_coordinator)
    async with ScriptedProvider.connect(each_coordinator.base_url, token=enrolled.token) as flood:
        await flood.wait_routable(each_coordinator.base_url)

        async def flood_it() -> ScriptedJob:
            job = await flood.next_job()
            await job.started(5)
            piece = "y" * 200_000
            with contextlib.suppress(Exception):  # the socket closes under it
                for _ in range(200):  # no credit asked for or waited on
                    await job.text(piece, 200)
            return job

        flooding = asyncio.create_task(flood_it())
        async with await open_stream(consumer) as stream:
            assert stream.status_code == 200
            # The consumer reads nothing while the provider floods.
            assert await flood.closed() == CLOSE_PROTOCOL_ERROR
            job = await flooding
            assert job.credit < 200
        growth = rss_bytes(each_coordinator) - rss_before
        # 200 events of 200 kB (40 MB) were sent; kept whole they would show here.
        assert growth < 32 * 1024 * 1024, growth
        await books.wait_settled()
        assert await books.balance("flooder") == before["flooder"]
        assert await books.open_holds() == []
        await books.assert_balanced()
    await assert_out_of_routing(each_coordinator, flood, enrolled)
    await assert_live()


async def test_a_provider_sending_past_max_tokens_is_cut_off_untrusted_and_unpaid(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("overrun")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as liar:
        await liar.wait_routable(coordinator.base_url)

        async def overrun() -> None:
            job = await liar.next_job()
            assert job.request.max_tokens == 3
            await job.started(5)
            with contextlib.suppress(Exception):
                for n in range(10):
                    await job.text(f" w{n}")

        async def ask() -> httpx.Response:
            return await consumer.chat(max_tokens=3)

        response, _ = await asyncio.gather(ask(), overrun())
        assert response.status_code != 500
        assert await liar.closed() == CLOSE_PROTOCOL_ERROR
        await assert_money(
            books, consumer, "overrun", before, delivered_tokens=3, provider_honest=False
        )
    await assert_out_of_routing(coordinator, liar, enrolled)
    await assert_live()
    assert_clean_log(coordinator)


# --- 5. the job deadline holds when the consumer stops reading; leases keep live holds ---------


@pytest.mark.coordinator_settings(MAX_JOB_DURATION_S="3")
async def test_a_consumer_that_stops_reading_is_cut_at_the_deadline_and_charged_anyway(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("honest")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as honest:
        await honest.wait_routable(coordinator.base_url)

        sent_at: list[float] = []

        async def serve_until_cancelled() -> ScriptedJob:
            job = await honest.next_job()
            sent_at.append(time.monotonic())
            await job.started(5)
            for n in range(4):
                await job.text(f" w{n}")
            await job.wait_cancelled(timeout=15)  # the deadline, with nobody reading
            await job.finish("cancelled")
            await job.receipt()
            return job

        serving = asyncio.create_task(serve_until_cancelled())
        async with await open_stream(consumer) as stream:
            assert stream.status_code == 200
            # Never read: the job ends on the coordinator's clock alone, hold closed.
            job = await serving
            await books.wait_settled(timeout=15)
            # On time: the deadline, the receipt's grace, and a little slack for two cores.
            assert time.monotonic() - sent_at[0] < 3 + 2 + 3
        jobs = await assert_money(
            books, consumer, "honest", before, delivered_tokens=4, provider_honest=True
        )
        assert [j.billed_completion_tokens > 0 for j in jobs] == [True], jobs  # not free
        assert await books.balance("honest") > before["honest"]
        assert job.is_cancelled
        await assert_trusted(coordinator, honest)
    await assert_live()
    assert_clean_log(coordinator)


@pytest.mark.coordinator_settings(HOLD_LEASE_S="3")
async def test_a_job_outliving_its_hold_lease_keeps_its_hold_and_settles_once(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    from moonflower.ledger.tables import Hold

    async def hold_row() -> Hold:
        async with books.db.sessions() as session:
            [row] = (await session.scalars(select(Hold))).all()
        return row

    enrolled = await provider_token("honest")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as honest:
        await honest.wait_routable(coordinator.base_url)
        asking = asyncio.create_task(stream_chat(consumer))
        job = await honest.next_job()
        await job.started(5)
        await job.text("slow")
        first = await hold_row()
        assert first.status == "held" and first.lease_expires_at is not None
        first_expiry = first.lease_expires_at
        # Keep the job running until the coordinator's clock passes its first lease term,
        # with the lease renewed all along.
        async with asyncio.timeout(15):
            while True:
                row = await hold_row()
                assert row.status == "held", row
                assert row.lease_expires_at is not None
                if row.lease_expires_at > first_expiry + timedelta(seconds=3):
                    break
                await asyncio.sleep(0.1)
        await job.text(" answer")
        await job.finish("stop")
        await job.receipt()
        status, text, _ = await asyncio.wait_for(asyncio.shield(asking), 10)
        assert (status, text) == (200, "slow answer")
        [settled] = await assert_money(
            books, consumer, "honest", before, delivered_tokens=2, provider_honest=True
        )
        assert settled.billed_completion_tokens == 2
        assert [h.status for h in await books.holds()] == ["settled"]
    await assert_live()
    assert_clean_log(coordinator)


# --- 6. settlement against a database that is briefly locked ------------------------------------


@contextlib.asynccontextmanager
async def database_locked(
    running: RunningCoordinator, books: Books
) -> AsyncIterator[Callable[[], Awaitable[list[str]]]]:
    """Someone else holds the lock the coordinator's settlement needs (SQLite: the write
    lock; PostgreSQL: the accounts table) until the block ends; yields a reader of the
    holds' statuses that works while the lock is held."""
    if running.is_postgres:
        async with books.db.engine.connect() as connection:
            transaction = await connection.begin()
            await connection.execute(sql("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE"))

            async def pg_statuses() -> list[str]:
                rows = await connection.execute(sql("SELECT status FROM holds"))
                return [row[0] for row in rows]

            try:
                yield pg_statuses
            finally:
                await transaction.rollback()
        return
    path = running.database_url.split(":///", 1)[1]
    lock = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN IMMEDIATE")

        async def sqlite_statuses() -> list[str]:
            return [row[0] for row in lock.execute("SELECT status FROM holds").fetchall()]

        yield sqlite_statuses
    finally:
        lock.execute("ROLLBACK")
        lock.close()


async def wait_for_log(running: RunningCoordinator, needle: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while needle not in running.log():
            await asyncio.sleep(0.05)


@pytest.mark.coordinator_settings(DATABASE_TIMEOUT_S="1")
async def test_a_settlement_blocked_by_a_locked_database_lands_once_after_the_lock_goes(
    each_coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("honest")
    before = await books.balances()
    async with ScriptedProvider.connect(each_coordinator.base_url, token=enrolled.token) as honest:
        await honest.wait_routable(each_coordinator.base_url)

        async def begin() -> ScriptedJob:
            job = await honest.next_job()
            await job.started(5)
            await job.text("one")
            await job.text(" two")
            return job

        answering = asyncio.create_task(begin())
        async with await open_stream(consumer) as stream:
            job = await answering
            lines = stream.aiter_lines()
            async with asyncio.timeout(10):
                while "two" not in await anext(lines):
                    pass
            async with database_locked(each_coordinator, books) as hold_statuses:
                await job.finish("stop")
                await job.receipt()
                await wait_for_log(each_coordinator, "the database is unavailable; retrying")
                assert await hold_statuses() == ["held"]
            async with asyncio.timeout(15):
                async for _ in lines:
                    pass
        [settled] = await assert_money(
            books, consumer, "honest", before, delivered_tokens=2, provider_honest=True
        )
        assert settled.billed_completion_tokens == 2
        assert [h.status for h in await books.holds()] == ["settled"]
        await assert_trusted(each_coordinator, honest)
    await assert_live()


# --- 9. a hold write cancelled half-way ---------------------------------------------------------


async def test_a_hold_whose_requester_is_cancelled_while_it_is_written_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hard to time over the wire, so played at the dispatcher on a real SQLite database: the
    request is cancelled while its hold is being written, the write lands anyway (as a
    cancelled SQLite commit can), and the hold must not stay open for nobody."""
    from moonflower.ledger import billing
    from moonflower.ledger.accounts import get_account
    from moonflower.ledger.book import deposit
    from moonflower.ledger.keys import create_key
    from moonflower.ledger.tables import Hold
    from tests.support.fake_engine import ScriptedEngine
    from tests.support.inprocess import inprocess_network

    asked, may_write = asyncio.Event(), asyncio.Event()
    real_reserve = billing.reserve

    async def gated_reserve(*args: Any, **kwargs: Any) -> int:
        asked.set()
        await may_write.wait()  # the database answers when the test says so
        return await real_reserve(*args, **kwargs)

    monkeypatch.setattr(billing, "reserve", gated_reserve)
    async with inprocess_network(tmp_path, [ScriptedEngine()]) as net:
        db, dispatcher = net.services.db, net.services.dispatcher
        key = await create_key(db, account_name="hasty")
        await deposit(db, key.account_id, 10_000)
        holding = asyncio.create_task(dispatcher.holds.take("job-cut-short", key.account_id, 500))
        await asked.wait()
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
        may_write.set()  # the write lands after its requester is gone

        async def status() -> str | None:
            async with db.sessions() as session:
                hold = await session.get(Hold, "job-cut-short")
            return None if hold is None else hold.status

        async with asyncio.timeout(5):
            while await status() in (None, "held"):
                await asyncio.sleep(0.01)
        assert await status() == "released"
        account = await get_account(db, key.account_id)
        assert (account.balance_micro_usd, account.held_micro_usd) == (10_000, 0)
        assert "job-cut-short" not in dispatcher.leases


# --- 11. routing ranks on what the coordinator measured -----------------------------------------


async def serve_every_job(
    provider: ScriptedProvider, served: list[str], *, claim: int, pause_s: float
) -> None:
    """Serve every job this provider gets: eight five-byte deltas claiming `claim` tokens
    each, `pause_s` apart (the provider's real decode speed), and a receipt over its claims."""
    while True:
        job = await provider.next_job(timeout=60)
        await job.started(5)
        for n in range(8):
            if n:
                await asyncio.sleep(pause_s)  # decoding the next token
            await job.text(f" wd{n:02d}", claim)
        await job.finish("stop")
        await job.receipt()
        served.append(job.job_id)


async def test_a_provider_claiming_huge_usage_does_not_outrank_an_honest_faster_one(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    honest_account, liar_account = await provider_token("honest"), await provider_token("liar")
    before = await books.balances()
    honest_jobs: list[str] = []
    liar_jobs: list[str] = []
    async with (
        ScriptedProvider.connect(coordinator.base_url, token=honest_account.token) as honest,
        ScriptedProvider.connect(coordinator.base_url, token=liar_account.token) as liar,
    ):
        await honest.wait_routable(coordinator.base_url)
        await liar.wait_routable(coordinator.base_url)
        serving = [
            asyncio.create_task(serve_every_job(honest, honest_jobs, claim=1, pause_s=0.025)),
            # Half as fast, claiming a hundred tokens for every five bytes.
            asyncio.create_task(serve_every_job(liar, liar_jobs, claim=100, pause_s=0.05)),
        ]
        try:
            # Two requests at a time, one slot each: both providers serve every round.
            for _ in range(4):
                answers = await asyncio.gather(
                    consumer.chat(max_tokens=1000), consumer.chat(max_tokens=1000)
                )
                assert [a.status_code for a in answers] == [200, 200]
            assert (len(honest_jobs), len(liar_jobs)) == (4, 4)
            # Both proven: the next jobs go to the one the coordinator measured faster.
            for _ in range(5):
                answer = await consumer.chat(max_tokens=1000)
                assert answer.status_code == 200
            assert (len(honest_jobs), len(liar_jobs)) == (9, 4)
        finally:
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)
        await books.wait_settled()
        jobs = {job.id: job for job in await scripted_jobs(books)}
        for job_id in honest_jobs:
            assert jobs[job_id].billed_completion_tokens == 8
        for job_id in liar_jobs:  # its claims are bounded by the bytes it sent
            assert jobs[job_id].billed_completion_tokens <= 8 * 5
        assert await charged(books, consumer, before) == sum(cost_of(j) for j in jobs.values())
        for account, served in (("honest", honest_jobs), ("liar", liar_jobs)):
            shares = sum(cost_of(jobs[i]) - PRICES.fee(cost_of(jobs[i])) for i in served)
            assert await books.balance(account) - before[account] == shares
        assert await books.open_holds() == []
        await books.assert_balanced()
        await assert_trusted(coordinator, honest)
    await assert_live()
    assert_clean_log(coordinator)
