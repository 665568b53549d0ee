"""Revocations and price changes reach every replica, as real processes on loopback: two
coordinators on one PostgreSQL and one Redis, each remembering callers and prices for an hour,
so only the broadcast can explain a change showing on the replica that did not make it.

A key used on both replicas and revoked with `moonflower keys revoke` is refused on both
(401 in each dialect's shape) within seconds; an admin's price change through replica A
prices the next request replica B serves; with Redis stopped the replicas keep answering,
and once Redis is back a later revocation still reaches them; a Redis that hangs instead is
noticed, and a revocation made while it hung holds on every replica once it resumes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from moonflower.ledger.book import format_usd
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, free_port, wait_until
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

ADMIN_KEY = "admin-" + "x" * 32
HOUR_S = "3600"
HEARD_WITHIN_S = 10.0
"""Far below the caches' hour: a change seen within it was broadcast."""
MODEL = "smollm2-135m-instruct"


@dataclass
class Replicas:
    a: LocalNetwork
    """Replica A: no provider."""
    b: LocalNetwork
    """Replica B, on A's PostgreSQL and Redis, with a provider of the default model."""


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Replicas]:
    redis_server.start()
    root = tmp_path_factory.mktemp("broadcast")
    settings = {
        "REDIS_URL": redis_server.url(),
        "API_KEY_CACHE_S": HOUR_S,
        "PRICE_LIST_CACHE_S": HOUR_S,
        "ADMIN_KEY": ADMIN_KEY,
    }
    database_url = postgres_server.create_database()
    a = LocalNetwork(root, database_url=database_url, settings=settings)
    b = LocalNetwork(root, database_url=database_url, port=free_port(), settings=settings)
    try:
        a.cli("keys", "list")  # migrates the ledger before either replica starts
        a.start_coordinator()
        b.coordinator = b.spawn(
            "coordinator-b", "coordinator", "serve", "--port", str(b.port), *b.db_args()
        )
        wait_until(b.is_healthy, STARTUP_TIMEOUT_S, "replica B to answer /health")
        b.start_provider("provider-b")
        yield Replicas(a, b)
    finally:
        b.stop()
        a.stop()


def models_status(net: LocalNetwork, key: str) -> int:
    response = httpx.get(
        f"{net.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    return response.status_code


def refused_in_both_dialects(net: LocalNetwork, key: str) -> None:
    chat = httpx.post(
        f"{net.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert chat.status_code == 401, chat.text
    assert chat.json()["error"]["code"] == "invalid_api_key"
    messages = httpx.post(
        f"{net.base_url}/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert messages.status_code == 401, messages.text
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "authentication_error"


def within(seconds: float, condition: Callable[[], bool], what: str) -> float:
    """Wait for `condition` at most `seconds`; how long it took."""
    started = time.monotonic()
    wait_until(condition, seconds, what)
    return time.monotonic() - started


def revoke(net: LocalNetwork, key: str) -> None:
    """`moonflower keys revoke` by the key's display prefix (the raw key stays off the
    command line); the CLI is given the replicas' Redis through MOONFLOWER_REDIS_URL."""
    assert net.cli("keys", "revoke", key[:11]).startswith("revoked")


def test_a_key_revoked_with_the_cli_is_refused_on_every_replica_within_seconds(
    replicas: Replicas,
) -> None:
    key = replicas.a.create_key()
    assert models_status(replicas.a, key) == 200  # remembered for an hour on each
    assert models_status(replicas.b, key) == 200
    revoke(replicas.a, key)
    for net in (replicas.a, replicas.b):
        within(HEARD_WITHIN_S, lambda net=net: models_status(net, key) == 401, "refusal")
        refused_in_both_dialects(net, key)


def test_a_price_change_through_one_replica_prices_requests_on_the_other(
    replicas: Replicas,
) -> None:
    key = replicas.a.create_key()
    pricing_b = f"{replicas.b.base_url}/v1/pricing"
    before = httpx.get(pricing_b, timeout=10).json()["minimum_charge_micro_usd"]
    minimum = before + 777_777
    changed = httpx.put(
        f"{replicas.a.base_url}/v1/admin/pricing",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"minimum_charge_micro_usd": minimum},
        timeout=10,
    )
    assert changed.status_code == 200, changed.text
    within(
        HEARD_WITHIN_S,
        lambda: httpx.get(pricing_b, timeout=10).json()["minimum_charge_micro_usd"] == minimum,
        "replica B to list the new minimum charge",
    )
    served = httpx.post(
        f"{replicas.b.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2},
        timeout=120,
    )
    assert served.status_code == 200, served.text
    assert served.headers["x-moonflower-cost-usd"] == format_usd(minimum)


def test_after_redis_stops_and_returns_a_later_revocation_still_reaches_every_replica(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    key = replicas.a.create_key()
    redis_server.stop()
    try:
        # Nothing these requests need is in Redis: the replicas answer as before.
        assert models_status(replicas.a, key) == 200
        assert models_status(replicas.b, key) == 200
    finally:
        redis_server.start()
    assert models_status(replicas.b, key) == 200  # remembered again, for an hour
    revoke(replicas.a, key)
    within(HEARD_WITHIN_S, lambda: models_status(replicas.b, key) == 401, "refusal on B")
    within(HEARD_WITHIN_S, lambda: models_status(replicas.a, key) == 401, "refusal on A")
    for process in replicas.a.processes + replicas.b.processes:
        assert key not in process.log()


def test_a_redis_that_hangs_is_noticed_and_a_revocation_made_meanwhile_holds_once_it_resumes(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    key = replicas.a.create_key()
    assert models_status(replicas.b, key) == 200  # remembered for an hour
    noticed = "lost the broadcast subscription (TimeoutError)"
    before = replicas.b.coordinator.log().count(noticed) if replicas.b.coordinator else 0
    with redis_server.paused():
        # The frozen server keeps its sockets open: only B's own ping can tell it is gone.
        wait_until(
            lambda: (
                replicas.b.coordinator is not None
                and replicas.b.coordinator.log().count(noticed) > before
            ),
            HEARD_WITHIN_S,
            "replica B to notice that Redis hangs",
        )
        revoke(replicas.a, key)  # its announcement cannot get through
    within(HEARD_WITHIN_S, lambda: models_status(replicas.b, key) == 401, "refusal on B")
