"""One contract for every rate limiter: the in-memory one (a single coordinator) and the Redis
one (replicas), on the real clock and a real Redis server. The limits are chosen so that a
refill during a test is far smaller than what the test checks; nothing waits for time to pass.

For Redis alone: replicas draw on one budget, keys expire once refilled, and a Redis that is
gone or hangs is `StoreUnavailable` within the time-out, then fine again once it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from moonflower import errors
from moonflower.coordinator.limits import RateLimiter, RateLimits
from moonflower.coordinator.redis_limits import RedisRateLimits
from moonflower.coordinator.redis_store import TIMEOUT_S, RedisStore
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network
from tests.support.redis import RedisServer

MakeLimits = Callable[[int | None, int | None], RateLimiter]
"""Builds a limiter from (requests per minute, tokens per minute); each one built by the same
maker is another replica of the same coordinator, sharing its store where it has one."""


class RedisReplicas:
    """Limiters on one Redis server and key prefix, each with its own client, as replicas."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._stores: list[RedisStore] = []

    def __call__(self, rpm: int | None, tpm: int | None) -> RedisRateLimits:
        store = RedisStore.connect(self.url, prefix=self.prefix)
        self._stores.append(store)
        return RedisRateLimits(store, rpm, tpm)

    async def aclose(self) -> None:
        for store in self._stores:
            await store.aclose()


@pytest.fixture
async def redis_replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisReplicas]:
    replicas = RedisReplicas(redis_url, redis_prefix)
    yield replicas
    await replicas.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_limits(request: pytest.FixtureRequest) -> MakeLimits:
    if request.param == "memory":
        return lambda rpm, tpm: RateLimits(rpm, tpm)
    replicas: RedisReplicas = request.getfixturevalue("redis_replicas")
    return replicas


async def refused(limits: RateLimiter, key: str) -> errors.RateLimited:
    with pytest.raises(errors.RateLimited) as caught:
        await limits.admit(key)
    return caught.value


async def test_a_key_gets_its_requests_per_minute_then_a_refusal(make_limits: MakeLimits) -> None:
    limits = make_limits(5, None)
    for _ in range(5):
        await limits.admit("k")
    error = await refused(limits, "k")
    assert error.limit == "requests"
    assert error.retry_after_s in (11, 12)  # one request refills every 60 / 5 s
    assert "5 per minute" in error.message
    for _ in range(20):  # refusals count nothing
        assert (await refused(limits, "k")).limit == "requests"


async def test_tokens_recorded_over_the_limit_refuse_new_requests(make_limits: MakeLimits) -> None:
    limits = make_limits(None, 1000)
    await limits.admit("k")
    await limits.record_tokens("k", 1000)
    await limits.admit("k")  # at the limit, not over it
    await limits.record_tokens("k", 500)
    error = await refused(limits, "k")
    assert error.limit == "tokens"
    assert error.retry_after_s in (29, 30)  # 500 over, refilling 1000 per 60 s
    assert "1000 per minute" in error.message


async def test_when_both_are_over_the_longer_wait_is_named(make_limits: MakeLimits) -> None:
    limits = make_limits(2, 100)
    await limits.admit("k")
    await limits.admit("k")
    await limits.record_tokens("k", 200)  # 100 over: 60 s; the next request refills in 30 s
    error = await refused(limits, "k")
    assert error.limit == "tokens"
    assert error.retry_after_s in (59, 60)


async def test_a_request_limit_alone_ignores_tokens(make_limits: MakeLimits) -> None:
    limits = make_limits(5, None)
    await limits.record_tokens("k", 10**9)
    await limits.admit("k")


async def test_keys_are_independent(make_limits: MakeLimits) -> None:
    limits = make_limits(1, 1000)
    await limits.admit("a")
    assert (await refused(limits, "a")).limit == "requests"
    await limits.admit("b")
    await limits.record_tokens("c", 5000)
    assert (await refused(limits, "c")).limit == "tokens"
    await limits.admit("d")


async def test_unlimited_settings_never_refuse(make_limits: MakeLimits) -> None:
    limits = make_limits(None, None)
    assert limits.is_unlimited
    for i in range(300):
        await limits.admit(f"k{i % 3}")
        await limits.record_tokens(f"k{i % 3}", 10**9)
    assert not make_limits(1, None).is_unlimited


@pytest.mark.redis
async def test_replicas_share_one_budget(redis_replicas: RedisReplicas) -> None:
    replicas = [redis_replicas(6, None) for _ in range(3)]
    outcomes = await asyncio.gather(
        *(replicas[n % 3].admit("k") for n in range(30)), return_exceptions=True
    )
    assert sum(outcome is None for outcome in outcomes) == 6  # six in all, not six each
    assert all(outcome is None or isinstance(outcome, errors.RateLimited) for outcome in outcomes)
    await replicas[0].record_tokens("k", 10)  # a request limit alone ignores tokens
    assert (await refused(replicas[1], "k")).limit == "requests"


@pytest.mark.redis
async def test_tokens_recorded_by_one_replica_refuse_on_another(
    redis_replicas: RedisReplicas,
) -> None:
    one, other = redis_replicas(None, 1000), redis_replicas(None, 1000)
    await one.record_tokens("k", 1500)
    assert (await refused(other, "k")).limit == "tokens"


@pytest.mark.redis
async def test_a_key_expires_once_its_buckets_have_refilled(
    redis_replicas: RedisReplicas,
) -> None:
    limits = redis_replicas(60, 6000)  # a request refills in 1 s, 100 tokens in 1 s
    redis = Redis.from_url(redis_replicas.url)
    key = f"{redis_replicas.prefix}ratelimit:k"
    try:
        await limits.admit("k")
        assert 900 < await redis.pttl(key) <= 1000
        await limits.record_tokens("k", 600)  # refilled in 6 s
        assert 5900 < await redis.pttl(key) <= 6000
    finally:
        await redis.aclose()


@pytest.mark.redis
async def test_a_stopped_redis_is_unavailable_quickly_then_fine_again(
    redis_server: RedisServer, redis_replicas: RedisReplicas
) -> None:
    limits = redis_replicas(100, 1000)
    await limits.admit("k")  # connected while Redis was up
    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(errors.StoreUnavailable) as caught:
            await limits.admit("k")
        with pytest.raises(errors.StoreUnavailable):
            await limits.record_tokens("k", 10)
        assert time.monotonic() - started < 2 * TIMEOUT_S
        assert caught.value.retry_after_s >= 1
    finally:
        redis_server.start()
    await limits.admit("k")  # its pooled connections reconnect; its script is sent again
    await limits.record_tokens("k", 10)


@pytest.mark.redis
async def test_a_hanging_redis_is_unavailable_within_the_time_out(
    redis_server: RedisServer, redis_replicas: RedisReplicas
) -> None:
    limits = redis_replicas(100, None)
    await limits.admit("k")
    with redis_server.paused():
        started = time.monotonic()
        with pytest.raises(errors.StoreUnavailable):
            await limits.admit("k")
        assert time.monotonic() - started < TIMEOUT_S + 0.5
    await limits.admit("k")


async def test_unlimited_redis_limits_never_reach_redis() -> None:
    store = RedisStore.connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        limits = RedisRateLimits(store, None, None)
        await limits.admit("k")
        await limits.record_tokens("k", 100)
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_a_coordinator_given_redis_limits_through_it_and_answers_503_without_it(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    engine = ScriptedEngine(script="a b")
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        inprocess_network(
            tmp_path, [engine], redis_url=redis_url, rate_limit_requests_per_minute=2
        ) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        assert isinstance(net.services.dispatcher.limits, RedisRateLimits)
        statuses = [(await client.post("/v1/chat/completions", json=chat)).status_code]
        redis_server.stop()
        try:
            unavailable = await client.post("/v1/chat/completions", json=chat)
        finally:
            redis_server.start()  # empty again: the key's budget starts afresh
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json=chat)
            statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert unavailable.status_code == 503
    assert int(unavailable.headers["retry-after"]) >= 1
    assert len(engine.requests) == 3
