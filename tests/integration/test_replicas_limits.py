"""Limits and money across three replicas on one PostgreSQL and one Redis, as real processes
with the real model's provider on one of them: 200 concurrent requests spread over the
replicas on a key that affords 50 get exactly 50 answers and exact balances, and a key
limited to N requests a minute gets N in total, not N per replica."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.money import Prices, accounts
from tests.support.network import wait_until
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

MODEL = "smollm2-135m-instruct"
PRICES = Prices(input=0, output=0, minimum=1_000, fee_bps=500)
REQUESTS = 200
AFFORDABLE = 50
PER_MINUTE = 240
"""Every key's request limit: above what the affordability test sends."""


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    cluster = Cluster.on(
        tmp_path_factory.mktemp("replica-limits"),
        postgres_server.create_database(),
        redis_server,
        **PRICES.settings(),
        RATE_LIMIT_REQUESTS_PER_MINUTE=str(PER_MINUTE),
        # Room in the line for every request either test sends, and time enough to wait
        # on a loaded machine: a request turned away by the line (429, overloaded) never
        # reaches the limiter or the ledger, and would blur what is measured.
        QUEUE_MAX_WAITING=str(PER_MINUTE + 60),
        QUEUE_MAX_WAIT_S="240",
    )
    try:
        watcher = cluster.create_key("watcher", credit_usd="1")
        cluster.start_replicas(3)
        cluster.replica(1).start_provider("provider-b")
        for replica in (cluster.replica(0), cluster.replica(2)):  # it sees the offer
            wait_until(
                lambda replica=replica: (
                    httpx.post(
                        f"{replica.base_url}/v1/messages/count_tokens",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
                        headers={"x-api-key": watcher, "anthropic-version": "2023-06-01"},
                        timeout=60,
                    ).status_code
                    == 200
                ),
                30,
                "each replica to find the provider",
            )
        yield cluster
    finally:
        cluster.stop()


async def spread(cluster: Cluster, key: str, count: int) -> list[tuple[int, int]]:
    """`count` chat completions at once, request n at replica n mod 3; each one's status
    and, for a 200, the completion tokens it reported. A 429 must be the key's own rate
    limit, not a full line (which the fixture leaves room enough to avoid)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=300
    ) as client:

        async def ask(n: int) -> tuple[int, int]:
            replica = cluster.replica(n % 3)
            response = await client.post(
                f"{replica.base_url}/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Say {n}."}],
                    "max_tokens": 1,
                },
            )
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "rate_limit_exceeded", response.text
            if response.status_code != 200:
                return response.status_code, 0
            return 200, int(response.json()["usage"]["completion_tokens"])

        return await asyncio.gather(*(ask(n) for n in range(count)))


def test_a_key_that_affords_fifty_gets_fifty_answers_from_all_replicas_together(
    cluster: Cluster,
) -> None:
    consumer = f"crowd-{uuid.uuid4().hex[:8]}"
    key = cluster.create_key(consumer, credit_usd=f"{AFFORDABLE * PRICES.minimum / 1e6:.6f}")
    before = accounts(cluster.operator)
    answers = asyncio.run(spread(cluster, key, REQUESTS))
    statuses = [status for status, _tokens in answers]
    assert statuses.count(200) == AFFORDABLE, sorted(set(statuses))
    assert statuses.count(402) == REQUESTS - AFFORDABLE
    paid = sum(1 for status, tokens in answers if status == 200 and tokens > 0)
    after = accounts(cluster.operator)
    fee = paid * PRICES.fee(PRICES.minimum)
    assert after[consumer].balance_micro_usd == (AFFORDABLE - paid) * PRICES.minimum
    assert after[consumer].held_micro_usd == 0
    assert after["platform"].balance_micro_usd - before["platform"].balance_micro_usd == fee
    earned = sum(
        after[name].balance_micro_usd - before[name].balance_micro_usd
        for name in before
        if before[name].kind == "provider"
    )
    assert earned == paid * PRICES.minimum - fee
    assert sum(a.balance_micro_usd for a in after.values()) == 0


def test_a_request_limit_holds_for_all_replicas_together(cluster: Cluster) -> None:
    # No credit: every admitted request is refused for payment (402) after the limiter
    # counted it, so no request runs the model and the limit is all that is measured.
    key = cluster.create_key(f"limited-{uuid.uuid4().hex[:8]}", credit_usd=None)
    started = time.monotonic()
    answers = asyncio.run(spread(cluster, key, PER_MINUTE + 60))
    refilled = math.ceil((time.monotonic() - started) * PER_MINUTE / 60)
    statuses = [status for status, _tokens in answers]
    assert set(statuses) == {402, 429}
    # The whole minute's budget, plus what refilled while the requests came in (4 a second);
    # limits kept per replica would have let all 300 through (100 each).
    assert PER_MINUTE <= statuses.count(402) <= PER_MINUTE + refilled
