"""Waiting for a free slot: requests beyond every provider's slots queue per model in FIFO
order, and a full queue or a wait that runs out is a 429 with Retry-After that costs
nothing. Fake engines (queueing behaviour only) in an in-process network.

Every order and every "still busy" here is made by the test, never by timing: a request is
sent only once the one before it is seen on the engine or in the queue, and a job holds its
slot until the test lets it go (`GatedEngine`). The queue orders requests by when they join
it, which is after authentication and the hold; requests merely sent a few milliseconds
apart may be admitted in either order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.accounts import get_account
from moonflower.ledger.keys import authenticate
from tests.support.fake_engine import GatedEngine, ScriptedEngine
from tests.support.inprocess import STARTING_CREDIT_MICRO_USD, InProcessNetwork, inprocess_network

MODEL = "fake-model"


def chat(tag: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": tag}], **extra}


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None


def served(engine: ScriptedEngine) -> list[str]:
    return [r.messages[0].content for r in engine.requests]


async def occupy(
    client: httpx.AsyncClient, engine: ScriptedEngine, tags: list[str], **extra: object
) -> list[asyncio.Task[httpx.Response]]:
    """One request per tag, each running on the engine before the next is sent."""
    running = []
    for tag in tags:
        before = len(engine.requests)
        running.append(asyncio.create_task(client.post("/v1/chat/completions", json=chat(tag))))
        await until(lambda before=before: len(engine.requests) > before, f"{tag} to start")  # type: ignore[misc]
    assert served(engine)[-len(tags) :] == tags
    return running


async def enqueue(
    client: httpx.AsyncClient, net: InProcessNetwork, tags: list[str]
) -> list[asyncio.Task[httpx.Response]]:
    """One request per tag, each waiting in the model's queue before the next is sent."""
    queues = net.services.queues
    waiting = []
    for tag in tags:
        before = queues.waiting(MODEL)
        waiting.append(asyncio.create_task(client.post("/v1/chat/completions", json=chat(tag))))
        await until(lambda before=before: queues.waiting(MODEL) > before, f"{tag} to queue")  # type: ignore[misc]
    return waiting


async def fill_both_slots(
    client: httpx.AsyncClient, engine: ScriptedEngine
) -> list[asyncio.Task[httpx.Response]]:
    """Two requests running on the engine's two slots (returned once both have started)."""
    return await occupy(client, engine, ["busy-0", "busy-1"])


async def test_requests_beyond_the_slots_wait_and_run_in_arrival_order(tmp_path: Path) -> None:
    engine = GatedEngine(script="a b c")  # 2 slots
    tags = [f"request-{n}" for n in range(8)]
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        try:
            running = await occupy(client, engine, tags[:2])
            waiting = await enqueue(client, net, tags[2:])
            assert net.services.queues.waiting(MODEL) == 6
            # Free one slot at a time: the queue's front takes it before the next frees.
            for n, tag in enumerate(tags):
                engine.release(tag)
                if n + 2 < len(tags):
                    await until(lambda n=n: len(engine.requests) == n + 3, f"slot {n} reused")  # type: ignore[misc]
            responses = await asyncio.gather(*running, *waiting)
        finally:
            engine.release_all()
        assert [r.status_code for r in responses] == [200] * 8
        assert served(engine) == tags
        assert net.services.queues.waiting(MODEL) == 0


async def test_a_full_queue_is_a_429_with_retry_after_that_costs_nothing(
    tmp_path: Path,
) -> None:
    engine = GatedEngine(script="a b c")  # 2 slots
    async with (
        inprocess_network(tmp_path, [engine], queue_max_waiting=1) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        try:
            running = await occupy(client, engine, ["r0", "r1"])
            waiting = await enqueue(client, net, ["r2"])
            refused = [
                await client.post("/v1/chat/completions", json=chat("r3")),
                await client.post("/v1/messages", json={**chat("r4"), "max_tokens": 5}),
            ]
            engine.release_all()
            responses = [*await asyncio.gather(*running, *waiting), *refused]
        finally:
            engine.release_all()
        statuses = [r.status_code for r in responses]
        assert statuses == [200, 200, 200, 429, 429]
        for response in refused:
            assert int(response.headers["retry-after"]) >= 1
        assert refused[0].json()["error"]["code"] == "server_is_overloaded"
        assert refused[1].json()["error"]["type"] == "rate_limit_error"
        assert served(engine) == ["r0", "r1", "r2"]
        caller = await authenticate(net.services.db, net.key)
        assert caller is not None
        account = await get_account(net.services.db, caller.account_id)
        jobs = await job_ledger.list_jobs(net.services.db)
        assert len(jobs) == 3
        assert account.held_micro_usd == 0
        charged = sum(j.charged_micro_usd for j in jobs)
        assert account.balance_micro_usd == STARTING_CREDIT_MICRO_USD - charged


async def test_a_wait_that_runs_out_is_a_429(tmp_path: Path) -> None:
    engine = GatedEngine(script="a b c")
    async with (
        inprocess_network(tmp_path, [engine], queue_max_wait_s=0.3) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        try:
            running = await occupy(client, engine, ["r0", "r1"])
            late = await client.post("/v1/chat/completions", json=chat("r2"))
            engine.release_all()
            responses = [*await asyncio.gather(*running), late]
        finally:
            engine.release_all()
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert "busy" in late.json()["error"]["message"]
        assert served(engine) == ["r0", "r1"]


async def test_rate_limits_per_key_are_429s(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="a b")
    async with (
        inprocess_network(tmp_path, [engine], rate_limit_requests_per_minute=3) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        statuses = [
            (await client.post("/v1/chat/completions", json=chat(f"r{n}"))).status_code
            for n in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]
        refused = await client.post("/v1/chat/completions", json=chat("again"))
        assert refused.json()["error"]["type"] == "requests"
        assert int(refused.headers["retry-after"]) >= 1
        assert len(engine.requests) == 3


async def test_a_waiting_stream_starts_at_once_and_keeps_alive(tmp_path: Path) -> None:
    engine = GatedEngine(script="slow " * 3)  # 2 slots
    async with (
        inprocess_network(tmp_path, [engine], sse_keepalive_s=0.1) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        try:
            busy = await fill_both_slots(client, engine)
            async with client.stream(
                "POST", "/v1/chat/completions", json=chat("waiting", stream=True)
            ) as response:
                assert response.status_code == 200  # headers before any provider is free
                chunks = response.aiter_text()
                body = await anext(chunks)  # no provider is free until the busy jobs go
                engine.release_all()
                body += "".join([chunk async for chunk in chunks])
            responses = await asyncio.gather(*busy)
        finally:
            engine.release_all()
        assert [r.status_code for r in responses] == [200, 200]
        lines = body.split("\n\n")
        assert lines[0] == ": keep-alive"  # the wait was filled with comments
        assert '"content":"slow"' in body
        assert body.endswith("data: [DONE]\n\n")
        assert engine.requests[-1].messages[0].content == "waiting"


async def test_a_waiting_stream_that_times_out_ends_with_an_error_event(tmp_path: Path) -> None:
    engine = GatedEngine(script="slow " * 3)
    async with (
        inprocess_network(tmp_path, [engine], queue_max_wait_s=0.3) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        try:
            busy = await fill_both_slots(client, engine)
            openai_stream = await client.post(
                "/v1/chat/completions", json=chat("late", stream=True)
            )
            anthropic_stream = await client.post(
                "/v1/messages", json={**chat("late", stream=True), "max_tokens": 5}
            )
            engine.release_all()
            await asyncio.gather(*busy)
        finally:
            engine.release_all()
        caller = await authenticate(net.services.db, net.key)
        assert caller is not None
        account = await get_account(net.services.db, caller.account_id)
    assert openai_stream.status_code == 200
    events = [e for e in openai_stream.text.split("\n\n") if e.startswith("data: {")]
    assert len(events) == 1
    assert '"code":"server_is_overloaded"' in events[0]
    assert openai_stream.text.endswith("data: [DONE]\n\n")
    assert anthropic_stream.text.startswith("event: error\ndata: {")
    assert '"type":"rate_limit_error"' in anthropic_stream.text
    assert account.held_micro_usd == 0  # the late requests' holds were given back
    assert len(engine.requests) == 2
