"""Holds written while the provider works: once an account's last hold showed enough
credit, its next request is sent to a provider at once and its hold is written meanwhile.
The first output still waits for the hold, and a refused hold cancels the job, records and
charges nothing, and answers 402 as a hold taken first would have."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from moonflower.generation import Finished, GenerationEvent, GenerationRequest
from moonflower.ledger import billing
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.accounts import get_account
from moonflower.ledger.book import deposit
from moonflower.ledger.keys import create_key
from moonflower.ledger.tables import Hold
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network

# A request with max_tokens 100 to an engine with a 64-token context holds 264 micro-USD
# at these prices (prompt bound 64 * 1 + 100 * 2); "hi" then costs 1 + 10 * 2 = 21.
STEEP = {
    "default_price": {"input": 1_000_000, "output": 2_000_000},
    "minimum_charge_micro_usd": 0,
}
NEEDED = 264
COST = 21


@dataclass
class LoggedEngine(ScriptedEngine):
    """Notes in `log` when each job reaches it."""

    log: list[str] = field(default_factory=list)

    def generate(self, request: GenerationRequest, cancel: Any) -> Iterator[GenerationEvent]:
        self.log.append(f"job {len(self.requests) + 1} sent")
        yield from super().generate(request, cancel)


def chat() -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    }


async def test_the_hold_is_written_while_the_provider_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LoggedEngine(context_length=64)
    log = engine.log
    holds_may_go = [asyncio.Event(), asyncio.Event()]
    real_reserve = billing.reserve

    async def gated_reserve(*args: Any, **kwargs: Any) -> int:
        n = sum(entry.startswith("hold") and "asked" in entry for entry in log) + 1
        log.append(f"hold {n} asked")
        await holds_may_go[n - 1].wait()  # the database answers when the test says so
        left = await real_reserve(*args, **kwargs)
        log.append(f"hold {n} written")
        return left

    monkeypatch.setattr(billing, "reserve", gated_reserve)
    async with inprocess_network(tmp_path, [engine], **STEEP) as net:
        db = net.services.db
        key = await create_key(db, account_name="funded")
        await deposit(db, key.account_id, 10 * NEEDED)
        headers = {"Authorization": f"Bearer {key.key}"}
        async with httpx.AsyncClient(base_url=net.base_url, headers=headers) as client:
            responses = []
            for n in (1, 2):
                asking = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
                await until(lambda n=n: f"hold {n} asked" in log)  # type: ignore[misc]
                if n == 2:
                    # Sent to the provider while its hold is still being written...
                    await until(lambda: len(engine.endings) == 2)
                    await asyncio.sleep(0.05)  # (time for an answer that would not wait)
                    assert not asking.done()  # ...but not answered before it is written.
                holds_may_go[n - 1].set()
                responses.append(await asking)
                log.append(f"answer {n}")
        after = await get_account(db, key.account_id)
    assert [r.status_code for r in responses] == [200, 200]
    assert log == [
        # The first request's hold came first: nothing was known of the account's credit.
        "hold 1 asked",
        "hold 1 written",
        "job 1 sent",
        "answer 1",
        # The second went to the provider at once; its answer still waited for the hold.
        "hold 2 asked",
        "job 2 sent",
        "hold 2 written",
        "answer 2",
    ]
    assert after.balance_micro_usd == 10 * NEEDED - 2 * COST
    assert after.held_micro_usd == 0


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_refused_hold_cancels_the_job_and_answers_402(tmp_path: Path) -> None:
    engine = ScriptedEngine(context_length=64, token_delay_s=0.05)
    async with inprocess_network(tmp_path, [engine], **STEEP) as net:
        db = net.services.db
        key = await create_key(db, account_name="drained")
        await deposit(db, key.account_id, 2 * NEEDED)
        headers = {"Authorization": f"Bearer {key.key}"}
        async with httpx.AsyncClient(base_url=net.base_url, headers=headers) as client:
            paid = await client.post("/v1/chat/completions", json=chat())
            assert paid.status_code == 200
            # Another coordinator takes the rest: this one's hint is now stale.
            left = 2 * NEEDED - COST
            await billing.reserve(db, "elsewhere", key.account_id, left)
            refused = await client.post("/v1/chat/completions", json=chat())
            assert len(engine.requests) == 2  # it was sent before the hold was refused
            again = await client.post("/v1/chat/completions", json=chat())
        async with asyncio.timeout(5):
            while len(engine.endings) < 2:
                await asyncio.sleep(0.01)
        jobs = await job_ledger.list_jobs(db, account_id=key.account_id)
        async with db.sessions() as session:
            holds = {h.job_id: h.status for h in (await session.execute(select(Hold))).scalars()}
        after = await get_account(db, key.account_id)
    for response in (refused, again):
        assert response.status_code == 402
        assert response.json()["error"]["type"] == "insufficient_quota"
    ending = engine.endings[1]
    assert isinstance(ending, Finished) and ending.reason == "cancelled"
    # The refused hint is forgotten: the third request's hold came first, and was refused.
    assert len(engine.requests) == 2
    assert [job.id for job in jobs] == [paid.headers["x-moonflower-job-id"]]
    assert holds == {paid.headers["x-moonflower-job-id"]: "settled", "elsewhere": "held"}
    assert after.balance_micro_usd == 2 * NEEDED - COST
    assert after.held_micro_usd == left
