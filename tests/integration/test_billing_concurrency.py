"""Reservations under load: many requests at once on a key that can afford only some.

Real coordinator and provider processes with the real model, on SQLite and on a real
PostgreSQL server. Prices are set so every request reserves, and is charged, exactly the
minimum: the key affords exactly `AFFORDABLE` requests, whatever order they arrive in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.money import Prices, accounts
from tests.support.network import LocalNetwork, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
PRICES = Prices(input=0, output=0, minimum=1_000, fee_bps=500)
REQUESTS = 200
AFFORDABLE = 50


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def loaded_network(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalNetwork]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    network = LocalNetwork(tmp_path, database_url=url, settings=PRICES.settings())
    try:
        network.start_coordinator()
        network.start_provider()
        yield network
    finally:
        network.stop()


async def ask_all(base_url: str, key: str) -> list[tuple[int, int]]:
    """Each request's status and, for a 200, the completion tokens it reported (a one-token
    answer whose token carries no text — a cut-off character — reports, and costs, none)."""
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, limits=limits
    ) as client:

        async def ask(n: int) -> tuple[int, int]:
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Say {n}."}],
                    "max_tokens": 1,
                },
                timeout=300,
            )
            if response.status_code != 200:
                return response.status_code, 0
            return 200, int(response.json()["usage"]["completion_tokens"])

        return await asyncio.gather(*(ask(n) for n in range(REQUESTS)))


def test_only_the_affordable_requests_run_and_balances_are_exact(
    loaded_network: LocalNetwork,
) -> None:
    network = loaded_network
    consumer = f"crowd-{uuid.uuid4().hex[:8]}"
    key = network.create_key(consumer, credit_usd=f"{AFFORDABLE * PRICES.minimum / 1e6:.6f}")
    watcher = network.create_key(f"watch-{uuid.uuid4().hex[:8]}", credit_usd=None)
    wait_until(
        lambda: bool(
            httpx.get(f"{network.base_url}/v1/models", headers={"x-api-key": watcher}).json()[
                "data"
            ]
        ),
        60,
        "the provider to be routable",
    )
    before = accounts(network)
    answers = asyncio.run(ask_all(network.base_url, key))
    statuses = [status for status, _tokens in answers]
    assert statuses.count(200) == AFFORDABLE
    assert statuses.count(402) == REQUESTS - AFFORDABLE
    paid = sum(1 for status, tokens in answers if status == 200 and tokens > 0)
    after = accounts(network)
    spent = paid * PRICES.minimum
    fee = paid * PRICES.fee(PRICES.minimum)
    assert after[consumer].balance_micro_usd == (AFFORDABLE - paid) * PRICES.minimum
    assert after[consumer].held_micro_usd == 0
    assert after["platform"].balance_micro_usd - before["platform"].balance_micro_usd == fee
    earned = sum(
        after[name].balance_micro_usd - before[name].balance_micro_usd
        for name in before
        if before[name].kind == "provider"
    )
    assert earned == spent - fee
    assert sum(a.balance_micro_usd for a in after.values()) == 0
