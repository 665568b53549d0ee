"""Waiting for a free slot: requests beyond every provider's slots queue per model in FIFO
order, and a full queue or a wait that runs out is a 429 with Retry-After that costs
nothing. Fake engines (queueing behaviour only) in an in-process network."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.accounts import get_account
from moonflower.ledger.keys import authenticate
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import STARTING_CREDIT_MICRO_USD, inprocess_network


def chat(tag: str, **extra: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": tag}], **extra}


async def fill_both_slots(
    client: httpx.AsyncClient, engine: ScriptedEngine
) -> list[asyncio.Task[httpx.Response]]:
    """Two requests running on the engine's two slots (returned once both have started)."""
    busy = [
        asyncio.create_task(client.post("/v1/chat/completions", json=chat(f"busy-{n}")))
        for n in range(2)
    ]
    async with asyncio.timeout(10):
        while len(engine.requests) < 2:
            await asyncio.sleep(0.01)
    return busy


async def test_requests_beyond_the_slots_wait_and_run_in_arrival_order(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="a b c d e f", token_delay_s=0.05)  # 2 slots
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):

        async def ask(n: int) -> int:
            await asyncio.sleep(0.03 * n)  # a defined arrival order
            response = await client.post("/v1/chat/completions", json=chat(f"request-{n}"))
            return response.status_code

        statuses = await asyncio.gather(*(ask(n) for n in range(8)))
        assert statuses == [200] * 8
        served = [r.messages[0].content for r in engine.requests]
        assert served == [f"request-{n}" for n in range(8)]
        assert net.services.dispatcher.queues.waiting("fake-model") == 0


async def test_a_full_queue_is_a_429_with_retry_after_that_costs_nothing(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine(script="slow " * 40, token_delay_s=0.05)  # 2 slots, ~2 s a job
    async with (
        inprocess_network(tmp_path, [engine], queue_max_waiting=1) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):

        async def ask(n: int, path: str, body: dict[str, object]) -> httpx.Response:
            await asyncio.sleep(0.05 * n)
            return await client.post(path, json=body)

        responses = await asyncio.gather(
            *(ask(n, "/v1/chat/completions", chat(f"r{n}")) for n in range(4)),
            ask(4, "/v1/messages", {**chat("r4"), "max_tokens": 5}),
        )
        statuses = [r.status_code for r in responses]
        assert statuses == [200, 200, 200, 429, 429]
        for refused in responses[3:]:
            assert int(refused.headers["retry-after"]) >= 1
        assert responses[3].json()["error"]["code"] == "server_is_overloaded"
        assert responses[4].json()["error"]["type"] == "rate_limit_error"
        caller = await authenticate(net.services.db, net.key)
        assert caller is not None
        account = await get_account(net.services.db, caller.account_id)
        jobs = await job_ledger.list_jobs(net.services.db)
        assert len(jobs) == 3
        assert account.held_micro_usd == 0
        charged = sum(j.charged_micro_usd for j in jobs)
        assert account.balance_micro_usd == STARTING_CREDIT_MICRO_USD - charged


async def test_a_wait_that_runs_out_is_a_429(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="slow " * 40, token_delay_s=0.05)
    async with (
        inprocess_network(tmp_path, [engine], queue_max_wait_s=0.3) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):

        async def ask(n: int) -> httpx.Response:
            await asyncio.sleep(0.05 * n)
            return await client.post("/v1/chat/completions", json=chat(f"r{n}"))

        responses = await asyncio.gather(*(ask(n) for n in range(3)))
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert "busy" in responses[2].json()["error"]["message"]


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
    engine = ScriptedEngine(script="slow " * 12, token_delay_s=0.05)  # 2 slots, ~0.6 s a job
    async with (
        inprocess_network(tmp_path, [engine], sse_keepalive_s=0.1) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        busy = await fill_both_slots(client, engine)
        async with client.stream(
            "POST", "/v1/chat/completions", json=chat("waiting", stream=True)
        ) as response:
            assert response.status_code == 200  # headers before any provider is free
            body = (await response.aread()).decode()
        assert [r.status_code for r in await asyncio.gather(*busy)] == [200, 200]
        lines = body.split("\n\n")
        assert lines[0] == ": keep-alive"  # the wait was filled with comments
        assert '"content":"slow"' in body
        assert body.endswith("data: [DONE]\n\n")
        assert engine.requests[-1].messages[0].content == "waiting"


async def test_a_waiting_stream_that_times_out_ends_with_an_error_event(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="slow " * 40, token_delay_s=0.05)  # ~2 s a job
    async with (
        inprocess_network(tmp_path, [engine], queue_max_wait_s=0.3) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        busy = await fill_both_slots(client, engine)
        openai_stream = await client.post("/v1/chat/completions", json=chat("late", stream=True))
        anthropic_stream = await client.post(
            "/v1/messages", json={**chat("late", stream=True), "max_tokens": 5}
        )
        await asyncio.gather(*busy)
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
