"""Queue order across replicas: when every slot for a model is busy, the slot that frees next
goes to the request that has waited longest, whichever replica that request reached and
whichever replica the slot is on. Without one line for the whole network, each replica would
hand its freed slot to the requests it holds itself, and a consumer who came later to the
right replica would overtake one who came earlier to another.

Two real coordinator processes on one PostgreSQL and one Redis; one scripted provider with
one slot on each, so the test decides when a slot frees and sees which request took it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from moonflower.coordinator.presence import RedisPresence
from moonflower.coordinator.redis_store import RedisStore
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.ticket_line import RedisTicketLine
from moonflower.coordinator.trust import TrustLevel
from tests.adversarial.conftest import (
    Books,
    Consumer,
    EnrolledProvider,
    RunningCoordinator,
    StartCoordinator,
)
from tests.support.scripted_provider import ScriptedJob, ScriptedProvider

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MODEL = "queued"
WAIT_S = 15.0


@pytest.fixture
def pg_coordinator(start_coordinator: StartCoordinator) -> RunningCoordinator:
    """Two replicas on PostgreSQL and Redis (what `running`, `books` and the consumers use)."""
    return start_coordinator("replicas", QUEUE_MAX_WAIT_S="60")


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_freed_slot_goes_to_the_request_that_waited_longest_on_any_replica(
    pg_coordinator: RunningCoordinator,
    books: Books,
    provider_token: Callable[[str], Awaitable[EnrolledProvider]],
    new_consumer: Callable[..., Awaitable[Consumer]],
) -> None:
    assert pg_coordinator.replica is not None
    urls = {"a": pg_coordinator.network.base_url, "b": pg_coordinator.replica.base_url}
    consumer = await new_consumer()
    store = RedisStore.connect(pg_coordinator.settings["REDIS_URL"])
    line = RedisTicketLine(store)
    observer = RedisPresence(
        store, Registry(default_floor=TrustLevel.NONE, freshness_s=60), replica_id="", url=""
    )
    token_a, token_b = await provider_token("provider-a"), await provider_token("provider-b")
    try:
        async with (
            ScriptedProvider.connect(urls["a"], token=token_a.token, model=MODEL) as on_a,
            ScriptedProvider.connect(urls["b"], token=token_b.token, model=MODEL) as on_b,
            httpx.AsyncClient(headers=consumer.headers, timeout=60) as client,
        ):
            providers = {"a": on_a, "b": on_b}
            for name, provider in providers.items():
                await provider.wait_routable(urls[name])

            def chat(replica: str, content: str) -> asyncio.Task[httpx.Response]:
                body: dict[str, Any] = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": content}],
                }
                return asyncio.create_task(
                    client.post(f"{urls[replica]}/v1/chat/completions", json=body)
                )

            async def next_on(replica: str) -> ScriptedJob:
                job = await providers[replica].next_job(WAIT_S)
                assert job.request.messages[0].content is not None
                return job

            # Both slots busy, and the replicas' offers say so.
            answers = [chat("a", "busy@a"), chat("b", "busy@b")]
            running = {"a": await next_on("a"), "b": await next_on("b")}

            async def nothing_free() -> bool:
                return await observer.elsewhere(MODEL, TrustLevel.NONE, need_free=True) is None

            await until(nothing_free, "the offers to show both slots taken")

            # Four requests wait, alternating between the replicas, each in line before
            # the next is sent.
            waiting = ["first@a", "second@b", "third@a", "fourth@b"]
            for count, content in enumerate(waiting, start=1):
                answers.append(chat(content[-1], content))

                async def in_line(count: int = count) -> bool:
                    return await line.waiting(MODEL) == count

                await until(in_line, f"{content} to join the line")

            # Slots free on b, a, b, a: each goes to the longest waiting request.
            served = []
            for replica in ("b", "a", "b", "a"):
                await running[replica].serve_honestly(["done"])
                running[replica] = await next_on(replica)
                served.append(running[replica].request.messages[0].content)
            assert served == waiting
            for job in running.values():
                await job.serve_honestly(["done"])

            responses = await asyncio.gather(*answers)
            assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
            assert await line.waiting(MODEL) == 0
        await books.wait_settled()
        await books.assert_balanced()
    finally:
        await store.aclose()
