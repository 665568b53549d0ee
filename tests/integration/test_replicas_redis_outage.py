"""Redis stopped under two replicas, as real processes with the real model's provider on one
of them and per-key rate limits set (so every request needs Redis): while it is gone, both
replicas answer fast with 503 in OpenAI's shape and 529 in Anthropic's, with Retry-After;
once it is back, both serve again by themselves, and no hold is left and no money lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.money import Prices, accounts
from tests.support.network import LocalNetwork, wait_until
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

MODEL = "smollm2-135m-instruct"
PRICES = Prices(input=0, output=0, minimum=1_000, fee_bps=500)
FAST_S = 5.0
"""A refusal because Redis is gone comes within Redis's 1 s bound, a few times over."""


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    cluster = Cluster.on(
        tmp_path_factory.mktemp("replica-outage"),
        postgres_server.create_database(),
        redis_server,
        **PRICES.settings(),
        RATE_LIMIT_REQUESTS_PER_MINUTE="1000",
    )
    try:
        cluster.create_key("warm-up")
        cluster.start_replicas(2)
        cluster.replica(1).start_provider("provider-b")
        yield cluster
    finally:
        redis_server.start()
        cluster.stop()


def chat(replica: LocalNetwork, key: str) -> httpx.Response:
    return httpx.post(
        f"{replica.base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def message(replica: LocalNetwork, key: str) -> httpx.Response:
    return httpx.post(
        f"{replica.base_url}/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=120,
    )


def test_both_replicas_fail_fast_without_redis_and_recover_when_it_returns(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    consumer = f"outage-{uuid.uuid4().hex[:8]}"
    key = cluster.create_key(consumer, credit_usd="1")
    replicas = [cluster.replica(0), cluster.replica(1)]
    for replica in replicas:
        wait_until(lambda r=replica: chat(r, key).status_code == 200, 30, "a first answer")

    redis_server.stop()
    try:
        for replica in replicas:
            started = time.monotonic()
            refused = chat(replica, key)
            assert time.monotonic() - started < FAST_S
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["type"] == "service_unavailable_error"
            assert int(refused.headers["retry-after"]) >= 1
            started = time.monotonic()
            overloaded = message(replica, key)
            assert time.monotonic() - started < FAST_S
            assert overloaded.status_code == 529, overloaded.text
            assert overloaded.json()["error"]["type"] == "overloaded_error"
    finally:
        redis_server.start()

    for replica in replicas:  # by themselves: nothing restarted but Redis
        wait_until(lambda r=replica: chat(r, key).status_code == 200, 30, "answers again")
        assert message(replica, key).status_code == 200
    books = accounts(cluster.operator)
    assert books[consumer].held_micro_usd == 0
    assert sum(account.balance_micro_usd for account in books.values()) == 0
