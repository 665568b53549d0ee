"""PostgreSQL restarted under two replicas, as real processes with the real model's provider
on one of them: while it is down both replicas answer within seconds 503 in OpenAI's shape
and 529 in Anthropic's, with Retry-After; once it is back both serve again by themselves,
and the books balance with no hold left."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.test_replicas_redis_outage import chat, message
from tests.support.cluster import Cluster
from tests.support.money import Prices, accounts
from tests.support.network import wait_until
from tests.support.postgres import PostgresControl, restartable_postgres
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

PRICES = Prices(input=0, output=0, minimum=1_000, fee_bps=500)
DATABASE_TIMEOUT_S = 2
FAST_S = 3 * DATABASE_TIMEOUT_S


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresControl]:
    with restartable_postgres() as control:
        yield control


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresControl, redis_server: RedisServer
) -> Iterator[Cluster]:
    cluster = Cluster.on(
        tmp_path_factory.mktemp("replica-pg-restart"),
        postgres.server.create_database(),
        redis_server,
        **PRICES.settings(),
        DATABASE_TIMEOUT_S=str(DATABASE_TIMEOUT_S),
        API_KEY_CACHE_S="0",
    )
    try:
        cluster.create_key("warm-up")
        cluster.start_replicas(2)
        cluster.replica(1).start_provider("provider-b")
        yield cluster
    finally:
        cluster.stop()


def test_both_replicas_fail_fast_while_postgres_restarts_and_recover(
    cluster: Cluster, postgres: PostgresControl
) -> None:
    consumer = f"restart-{uuid.uuid4().hex[:8]}"
    key = cluster.create_key(consumer, credit_usd="1")
    replicas = [cluster.replica(0), cluster.replica(1)]
    for replica in replicas:
        wait_until(lambda r=replica: chat(r, key).status_code == 200, 30, "a first answer")

    postgres.stop()
    try:
        for replica in replicas:
            started = time.monotonic()
            refused = chat(replica, key)
            assert time.monotonic() - started < FAST_S
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            started = time.monotonic()
            overloaded = message(replica, key)
            assert time.monotonic() - started < FAST_S
            assert overloaded.status_code == 529, overloaded.text
            assert overloaded.json()["error"]["type"] == "overloaded_error"
    finally:
        postgres.start()

    for replica in replicas:  # by themselves: nothing restarted but PostgreSQL
        wait_until(lambda r=replica: chat(r, key).status_code == 200, 60, "answers again")
        assert message(replica, key).status_code == 200
    books = accounts(cluster.operator)
    assert books[consumer].held_micro_usd == 0
    assert sum(account.balance_micro_usd for account in books.values()) == 0
