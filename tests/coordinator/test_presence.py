"""Presence: where else a model has free slots. One contract for both backings (a replica
never offers itself, nothing is elsewhere when nobody else serves), then the Redis backing
on a real Redis server: offers per trust level, the replica with most free slots first, full
replicas only when asked, withdrawn and stale offers gone, unreachable replicas avoided, and
a Redis that is gone is `StoreUnavailable`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from moonflower import errors
from moonflower.coordinator.presence import LocalPresence, Presence, RedisPresence
from moonflower.coordinator.redis_store import RedisStore
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.trust import TrustLevel
from tests.coordinator.test_scoring import occupy, registry_of, session
from tests.support.redis import RedisServer

MakePresence = Callable[..., Presence]
"""Builds one replica's presence from its registry (and a name); those built by one maker
share a store where they have one."""


class RedisReplicas:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.stores: list[RedisStore] = []

    def __call__(self, registry: Registry, name: str = "a", *, ttl_s: float = 3.0) -> RedisPresence:
        store = RedisStore.connect(self.url, prefix=self.prefix)
        self.stores.append(store)
        return RedisPresence(
            store, registry, replica_id=name, url=f"http://{name}.test", ttl_s=ttl_s
        )


@pytest.fixture
async def redis_replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisReplicas]:
    replicas = RedisReplicas(redis_url, redis_prefix)
    yield replicas
    for store in replicas.stores:
        await store.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_presence(request: pytest.FixtureRequest) -> MakePresence:
    if request.param == "memory":
        return lambda registry, name="a", **_: LocalPresence()
    replicas: RedisReplicas = request.getfixturevalue("redis_replicas")
    return replicas


async def publish(presence: Presence) -> None:
    if isinstance(presence, RedisPresence):
        await presence.publish()


async def test_a_replica_never_offers_itself(make_presence: MakePresence) -> None:
    alone = make_presence(registry_of(session("p1")), "a")
    await publish(alone)
    assert await alone.elsewhere("m", TrustLevel.NONE, need_free=False) is None


async def test_nothing_is_elsewhere_when_nobody_else_serves_the_model(
    make_presence: MakePresence,
) -> None:
    serving = make_presence(registry_of(session("p1", model="other")), "a")
    asking = make_presence(registry_of(), "b")
    await publish(serving)
    assert await asking.elsewhere("m", TrustLevel.NONE, need_free=False) is None


@pytest.mark.redis
async def test_free_slots_are_offered_per_trust_level(redis_replicas: RedisReplicas) -> None:
    registry = registry_of(
        session("plain", slots=4), session("signed", slots=2, trust=TrustLevel.SELF_SIGNED)
    )
    serving, asking = redis_replicas(registry, "a"), redis_replicas(registry_of(), "b")
    await serving.publish()
    offer = await asking.elsewhere("m", TrustLevel.NONE, need_free=True)
    assert offer is not None
    assert (offer.replica_id, offer.url, offer.free, offer.slots) == (
        "a",
        "http://a.test",
        (6, 2, 0),
        6,
    )
    assert await asking.elsewhere("m", TrustLevel.HARDWARE, need_free=True) is None
    assert await asking.elsewhere("m", TrustLevel.SELF_SIGNED, need_free=True) == offer


@pytest.mark.redis
async def test_a_full_replica_is_offered_only_to_queue_on(redis_replicas: RedisReplicas) -> None:
    provider = session("p1", slots=2)
    serving = redis_replicas(registry_of(provider), "a")
    asking = redis_replicas(registry_of(), "b")
    await occupy(provider, 2)
    await serving.publish()
    assert await asking.elsewhere("m", TrustLevel.NONE, need_free=True) is None
    offer = await asking.elsewhere("m", TrustLevel.NONE, need_free=False)
    assert offer is not None and offer.free == (0, 0, 0) and offer.slots == 2


@pytest.mark.redis
async def test_the_replica_with_most_free_slots_is_offered_and_changes_are_published(
    redis_replicas: RedisReplicas,
) -> None:
    busy = session("busy", slots=4)
    a = redis_replicas(registry_of(busy), "a")
    b = redis_replicas(registry_of(session("idle", slots=2)), "b")
    asking = redis_replicas(registry_of(), "c")
    await a.publish()
    await b.publish()
    first = await asking.elsewhere("m", TrustLevel.NONE, need_free=True)
    assert first is not None and first.replica_id == "a"
    await occupy(busy, 3)
    await a.publish()  # only what changed: a's offer
    second = await asking.elsewhere("m", TrustLevel.NONE, need_free=True)
    assert second is not None and second.replica_id == "b"


@pytest.mark.redis
async def test_withdrawn_offers_and_models_no_longer_served_are_gone(
    redis_replicas: RedisReplicas,
) -> None:
    registry = registry_of(session("p1"), session("p2", model="n"))
    serving, asking = redis_replicas(registry, "a"), redis_replicas(registry_of(), "b")
    await serving.publish()
    registry.remove("p2")
    await serving.publish()
    assert await asking.elsewhere("n", TrustLevel.NONE, need_free=False) is None
    assert await asking.elsewhere("m", TrustLevel.NONE, need_free=False) is not None
    await serving.withdraw()
    await serving.publish()  # a withdrawn replica publishes nothing more
    assert await asking.elsewhere("m", TrustLevel.NONE, need_free=False) is None


@pytest.mark.redis
async def test_an_offer_its_replica_stopped_refreshing_runs_out(
    redis_replicas: RedisReplicas,
) -> None:
    serving = redis_replicas(registry_of(session("p1")), "a", ttl_s=0.2)
    asking = redis_replicas(registry_of(), "b", ttl_s=0.2)
    await serving.publish()  # and never again, as if it died
    assert await asking.elsewhere("m", TrustLevel.NONE, need_free=True) is not None

    deadline = time.monotonic() + 10  # polled for, bounded
    while await asking.elsewhere("m", TrustLevel.NONE, need_free=False) is not None:
        assert time.monotonic() < deadline, "the offer never ran out"
        await asyncio.sleep(0.02)


@pytest.mark.redis
async def test_an_avoided_replica_is_not_offered(redis_replicas: RedisReplicas) -> None:
    a = redis_replicas(registry_of(session("p1", slots=4)), "a")
    b = redis_replicas(registry_of(session("p2", slots=1)), "b")
    asking = redis_replicas(registry_of(), "c")
    await a.publish()
    await b.publish()
    asking.avoid("a")
    offer = await asking.elsewhere("m", TrustLevel.NONE, need_free=True)
    assert offer is not None and offer.replica_id == "b"


@pytest.mark.redis
async def test_a_stopped_redis_is_store_unavailable_and_publishing_goes_on_after(
    redis_replicas: RedisReplicas, redis_server: RedisServer
) -> None:
    serving = redis_replicas(registry_of(session("p1")), "a")
    asking = redis_replicas(registry_of(), "b")
    redis_server.stop()
    try:
        with pytest.raises(errors.StoreUnavailable):
            await asking.elsewhere("m", TrustLevel.NONE, need_free=True)
        with pytest.raises(errors.StoreUnavailable):
            await serving.publish()
    finally:
        redis_server.start()
    await serving.publish()
    assert await asking.elsewhere("m", TrustLevel.NONE, need_free=True) is not None


@pytest.mark.redis
async def test_the_models_served_elsewhere_are_listed_with_their_supply(
    redis_replicas: RedisReplicas,
) -> None:
    a = redis_replicas(registry_of(session("p1"), session("p2"), session("p3", model="n")), "a")
    b = redis_replicas(registry_of(session("p4")), "b")
    asking = redis_replicas(registry_of(session("p5", model="own")), "c")
    for replica in (a, b, asking):
        await replica.publish()
    served = await asking.served_elsewhere()
    assert sorted(served) == ["m", "n"]  # not its own
    assert sorted((s.context_length, s.providers) for s in served["m"]) == [(512, 1), (512, 2)]
    await a.withdraw()
    assert sorted(await asking.served_elsewhere()) == ["m"]


async def test_a_single_coordinator_serves_nothing_elsewhere() -> None:
    assert await LocalPresence().served_elsewhere() == {}
