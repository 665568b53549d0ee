"""Failover before the first token: a provider that breaks, vanishes or stays silent after
accepting a prompt loses the job to another provider, and the consumer never notices.

Fake engines (routing and failure behaviour only) in an in-process network.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.accounts import get_account
from tests.support.fake_engine import GatedEngine, ScriptedEngine
from tests.support.inprocess import STARTING_CREDIT_MICRO_USD, inprocess_network

SCRIPT = "the answer arrives whole"


def chat(**extra: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], **extra}


def streamed_text(body: str) -> str:
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in body.splitlines()
        if line.startswith("data: {")
    ]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


async def wait_for_endings(engines: list[ScriptedEngine]) -> None:
    async with asyncio.timeout(5):
        while not all(e.endings for e in engines if e.requests):
            await asyncio.sleep(0.02)


async def test_a_provider_silent_after_accepting_loses_the_job(tmp_path: Path) -> None:
    engines = [
        ScriptedEngine(script=SCRIPT, first_token_delay_s=30),
        ScriptedEngine(script=SCRIPT, first_token_delay_s=30),
        ScriptedEngine(script=SCRIPT),
    ]
    async with (
        inprocess_network(tmp_path, engines, first_token_timeout_s=0.3) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=30) as client,
    ):
        for stream in (False, True):
            response = await client.post("/v1/chat/completions", json=chat(stream=stream))
            assert response.status_code == 200
            if stream:
                assert streamed_text(response.text) == SCRIPT
                assert response.text.count("[DONE]") == 1
            else:
                assert response.json()["choices"][0]["message"]["content"] == SCRIPT
            await wait_for_endings(engines)
        # The silent ones were told to stop: their jobs end cancelled, with no text sent.
        for engine in engines[:2]:
            assert all(e.kind == "finished" and e.reason == "cancelled" for e in engine.endings)
        assert len(engines[2].requests) == 2


async def test_a_provider_failing_before_its_first_token_loses_the_job(tmp_path: Path) -> None:
    broken = ScriptedEngine(script=SCRIPT, fails_before_first_token=True)
    working = GatedEngine(script=SCRIPT + " and more" * 10)
    async with (
        inprocess_network(tmp_path, [broken, working]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=30) as client,
    ):
        # Fill both of the working provider's slots (its jobs hold them until let go), so
        # the next request can only be sent to the broken one first.
        busy = [
            asyncio.create_task(client.post("/v1/chat/completions", json=chat())) for _ in range(2)
        ]
        try:
            async with asyncio.timeout(10):
                while len(working.requests) < 2:
                    await asyncio.sleep(0.01)
            tried_before = len(broken.requests)
            asking = asyncio.create_task(
                client.post("/v1/chat/completions", json=chat(max_tokens=4))
            )
            async with asyncio.timeout(10):
                while len(broken.requests) == tried_before:
                    await asyncio.sleep(0.01)
            working.release_all()  # a slot frees: the request that failed over waits for it
            response = await asking
        finally:
            working.release_all()
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "the answer arrives whole"
        assert len(broken.requests) == tried_before + 1  # tried, failed, and passed over
        assert [r.status_code for r in await asyncio.gather(*busy)] == [200, 200]
        jobs = await job_ledger.list_jobs(net.services.db)
        assert [j.status for j in jobs] == ["completed"] * 3  # one job per request
        account = await get_account(net.services.db, jobs[0].account_id)
        assert account.held_micro_usd == 0
        charged = sum(j.charged_micro_usd for j in jobs)
        assert account.balance_micro_usd == STARTING_CREDIT_MICRO_USD - charged


async def test_when_every_provider_fails_the_request_fails_and_costs_nothing(
    tmp_path: Path,
) -> None:
    engines = [ScriptedEngine(fails_before_first_token=True) for _ in range(4)]
    async with (
        inprocess_network(tmp_path, engines) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=30) as client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 502
        assert "failed before answering (3)" in response.json()["error"]["message"]
        assert sum(len(e.requests) for e in engines) == 3  # at most three attempts
        jobs = await job_ledger.list_jobs(net.services.db)
        assert [(j.status, j.error_code, j.charged_micro_usd) for j in jobs] == [
            ("failed", "engine_error", 0)
        ]
        account = await get_account(net.services.db, jobs[0].account_id)
        assert (account.balance_micro_usd, account.held_micro_usd) == (
            STARTING_CREDIT_MICRO_USD,
            0,
        )


async def test_silence_everywhere_is_a_504_after_three_tries(tmp_path: Path) -> None:
    engines = [ScriptedEngine(first_token_delay_s=30) for _ in range(3)]
    async with (
        inprocess_network(tmp_path, engines, first_token_timeout_s=0.2) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=30) as client,
    ):
        response = await client.post("/v1/messages", json={**chat(), "max_tokens": 10})
        assert response.status_code == 504
        assert response.json()["type"] == "error"
        assert all(len(e.requests) == 1 for e in engines)


async def test_a_refused_request_is_not_retried_elsewhere(tmp_path: Path) -> None:
    engines = [ScriptedEngine(context_length=3), ScriptedEngine(context_length=3)]
    async with (
        inprocess_network(tmp_path, engines) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=30) as client,
    ):
        long = {"role": "user", "content": "far too many words here"}
        response = await client.post("/v1/chat/completions", json=chat(messages=[long]))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert sum(len(e.requests) for e in engines) == 1
