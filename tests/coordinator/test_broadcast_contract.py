"""One contract for every broadcast: the in-memory one (a single coordinator) and the Redis one
(replicas), on a real Redis server. An announced revocation or price change reaches every
listener, the announcer's own included (and so does a line forming for a model), and real
caches forget the key or the prices at once, however long they would otherwise remember them.

For Redis alone: a message carries the key's hash, never the key; a malformed message is
ignored (one that is not text makes the subscriber start afresh); a Redis that is gone fails
no announcement, and the subscriber comes back by itself once Redis does, forgetting
everything cached (it may have missed something) and hearing later revocations again."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from moonflower.coordinator.auth import CallerCache
from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.broadcast import (
    CHANNEL,
    Broadcast,
    Listener,
    MemoryBroadcast,
    RedisBroadcast,
    ReplicaCaches,
)
from moonflower.coordinator.redis_store import RedisStore
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.keys import create_key, revoke_key
from moonflower.ledger.pricing import Price, store_pricing
from moonflower.settings import CoordinatorSettings
from tests.support.redis import RedisServer

HEARD_WITHIN_S = 5.0
KEY_HASH = "ab" * 32


class Heard:
    """A listener that writes down what it heard."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []
        self.flushes = 0

    def key_revoked(self, key_hash: str) -> None:
        self.events.append(("key_revoked", key_hash))

    def prices_changed(self) -> None:
        self.events.append(("prices_changed", None))

    def line_moved(self, model: str) -> None:
        self.events.append(("line_moved", model))

    def may_have_missed(self) -> None:
        self.flushes += 1


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HEARD_WITHIN_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {HEARD_WITHIN_S}s waiting for {what}")
        await asyncio.sleep(0.01)


class Replicas:
    """Broadcasts as replicas would hold them: one shared in-memory broadcast (one process),
    or one `RedisBroadcast` per replica, each on its own client of one Redis and prefix."""

    def __init__(self, url: str | None, prefix: str = "") -> None:
        self.url = url
        self.prefix = prefix
        self._memory = MemoryBroadcast()
        self._stores: list[RedisStore] = []
        self._broadcasts: list[Broadcast] = []

    def __call__(self) -> Broadcast:
        if self.url is None:
            return self._memory
        store = RedisStore.connect(self.url, prefix=self.prefix)
        self._stores.append(store)
        broadcast = RedisBroadcast(store)
        self._broadcasts.append(broadcast)
        return broadcast

    async def subscribed(self, *listeners: Listener) -> Broadcast:
        """A new replica whose broadcast delivers to `listeners` in turn, once it is
        subscribed."""
        broadcast = self()
        for listener in listeners:
            broadcast.subscribe(listener)
        await eventually(lambda: broadcast.is_subscribed, "the subscription")
        return broadcast

    async def aclose(self) -> None:
        for broadcast in [self._memory, *self._broadcasts]:
            await broadcast.aclose()
        for store in self._stores:
            await store.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    if request.param == "memory":
        made = Replicas(None)
    else:
        made = Replicas(
            request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        )
    yield made
    await made.aclose()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with await Database.open(default_database_url(tmp_path)) as opened:
        yield opened


async def test_a_revocation_reaches_every_listener_the_announcers_own_included(
    replicas: Replicas,
) -> None:
    one, other = Heard(), Heard()
    announcer = await replicas.subscribed(one)
    await replicas.subscribed(other)
    await announcer.key_revoked(KEY_HASH)
    assert one.events == [("key_revoked", KEY_HASH)]  # its own listener hears it at once
    await eventually(lambda: other.events == [("key_revoked", KEY_HASH)], "the revocation")


async def test_a_price_change_reaches_every_listener(replicas: Replicas) -> None:
    one, other = Heard(), Heard()
    await replicas.subscribed(one)
    announcer = await replicas.subscribed(other)
    await announcer.prices_changed()
    await eventually(lambda: one.events == [("prices_changed", None)], "the price change")
    await eventually(lambda: other.events == [("prices_changed", None)], "the price change")


async def test_a_line_forming_reaches_every_listener(replicas: Replicas) -> None:
    one, other = Heard(), Heard()
    await replicas.subscribed(one)
    announcer = await replicas.subscribed(other)
    await announcer.line_moved("some-model")
    for heard in (one, other):
        await eventually(
            lambda heard=heard: heard.events == [("line_moved", "some-model")], "the line"
        )


async def test_a_revoked_key_is_forgotten_by_a_cache_that_would_remember_it_an_hour(
    replicas: Replicas, db: Database
) -> None:
    created = await create_key(db)
    settings = CoordinatorSettings()
    announcer = await replicas.subscribed(
        ReplicaCaches(CallerCache(db, 3600), Pricing(db, settings))
    )
    callers = CallerCache(db, 3600)
    heard = Heard()
    await replicas.subscribed(ReplicaCaches(callers, Pricing(db, settings)), heard)
    assert await callers.caller(created.key) is not None
    key_hash = await revoke_key(db, created.key_id)
    assert key_hash is not None
    assert await callers.caller(created.key) is not None  # still remembered: the cache works
    await announcer.key_revoked(key_hash)
    await eventually(lambda: ("key_revoked", key_hash) in heard.events, "the revocation")
    assert await callers.caller(created.key) is None


async def test_a_price_change_is_read_at_once_by_a_cache_that_has_the_old_prices(
    replicas: Replicas, db: Database
) -> None:
    settings = CoordinatorSettings(price_list_cache_s=3600)
    pricing = Pricing(db, settings)
    heard = Heard()
    announcer = await replicas.subscribed(Heard())
    await replicas.subscribed(ReplicaCaches(CallerCache(db, 3600), pricing), heard)
    before = (await pricing.current()).price_of("some-model")
    await store_pricing(db, model_price=("some-model", Price(123, 456)))
    assert (await pricing.current()).price_of("some-model") == before  # still cached
    await announcer.prices_changed()
    await eventually(lambda: ("prices_changed", None) in heard.events, "the price change")
    assert (await pricing.current()).price_of("some-model") == Price(123, 456)


@pytest.mark.redis
async def test_a_message_carries_the_keys_hash_never_the_key(
    redis_url: str, redis_prefix: str, db: Database
) -> None:
    created = await create_key(db)
    key_hash = await revoke_key(db, created.key_id)
    assert key_hash == hashlib.sha256(created.key.encode()).hexdigest()
    replicas = Replicas(redis_url, redis_prefix)
    client = Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(f"{redis_prefix}{CHANNEL}")
        await replicas().key_revoked(key_hash)
        received = None
        deadline = time.monotonic() + HEARD_WITHIN_S
        while received is None and time.monotonic() < deadline:
            received = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        assert received is not None
        assert key_hash in received["data"]
        assert created.key not in received["data"]
        assert created.key[3:] not in received["data"]
    finally:
        await pubsub.aclose()
        await client.aclose()
        await replicas.aclose()


@pytest.mark.redis
async def test_a_malformed_message_is_ignored(redis_url: str, redis_prefix: str) -> None:
    replicas = Replicas(redis_url, redis_prefix)
    heard = Heard()
    client = Redis.from_url(redis_url)
    try:
        await replicas.subscribed(heard)
        channel = f"{redis_prefix}{CHANNEL}"
        await client.publish(channel, b"\xff")  # not even text: subscribes afresh
        await eventually(lambda: heard.flushes == 2, "the subscriber to start afresh")
        for junk in (
            b"[]",
            b"{}",
            b'{"event": "key_revoked", "key_hash": "mf-secret"}',
            b'{"event": "line_moved", "model": ""}',
            b'{"event": "line_moved", "model": "' + b"m" * 257 + b'"}',
            b'{"event": "line_moved", "model": 7}',
        ):
            await client.publish(channel, junk)
        await replicas().prices_changed()  # sent after the junk, so heard after it
        await eventually(lambda: heard.events == [("prices_changed", None)], "the price change")
    finally:
        await client.aclose()
        await replicas.aclose()


@pytest.mark.redis
async def test_the_subscriber_comes_back_after_redis_does_and_forgets_what_it_may_have_missed(
    redis_server: RedisServer, redis_url: str, redis_prefix: str
) -> None:
    replicas = Replicas(redis_url, redis_prefix)
    heard, own = Heard(), Heard()
    try:
        subscriber = await replicas.subscribed(heard)
        announcer = await replicas.subscribed(own)
        assert heard.flushes == 1  # a new subscription starts from nothing cached
        redis_server.stop()
        try:
            await eventually(lambda: not subscriber.is_subscribed, "the subscription to drop")
            started = time.monotonic()
            await announcer.key_revoked(KEY_HASH)  # lost on the wire, yet no error
            assert time.monotonic() - started < 2.0
            assert own.events == [("key_revoked", KEY_HASH)]  # the announcer's own hears it
        finally:
            redis_server.start()
        await eventually(lambda: subscriber.is_subscribed, "the subscriber to come back")
        await eventually(lambda: announcer.is_subscribed, "the announcer to come back")
        assert heard.flushes >= 2  # came back: forgot everything it may have missed
        assert heard.events == []
        await announcer.key_revoked("cd" * 32)
        await eventually(lambda: heard.events == [("key_revoked", "cd" * 32)], "the revocation")
    finally:
        await replicas.aclose()


async def test_a_redis_broadcast_without_redis_fails_no_announcement() -> None:
    store = RedisStore.connect("redis://127.0.0.1:1/0", timeout_s=0.2)  # nothing listens
    broadcast = RedisBroadcast(store)
    heard = Heard()
    try:
        broadcast.subscribe(heard)
        await broadcast.key_revoked(KEY_HASH)
        await broadcast.prices_changed()
        assert heard.events == [("key_revoked", KEY_HASH), ("prices_changed", None)]
        assert not broadcast.is_subscribed
    finally:
        await broadcast.aclose()
        await store.aclose()
