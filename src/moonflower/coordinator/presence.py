"""Which replica can serve a model: the free slots of every replica's providers, shared.

A provider is connected to one replica, which alone holds its socket. Each replica publishes,
per model it serves, how many slots its providers have in all and how many are free at each
trust level, a few times a second; a replica asked for a model it has no free slot for reads
where one is free and hands the request there (`forwarding`).

Two backings behind one interface, `Presence`: `LocalPresence` for a single coordinator
(nothing is elsewhere) and `RedisPresence`, which keeps one Redis hash per model (field: the
replica's id, value: its offer) and stamps every offer with Redis's own clock, so a replica
that died stops being offered `ttl_s` after its last publication, whatever the replicas'
clocks say. Readers drop offers that old as they find them. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import orjson

from moonflower import errors
from moonflower.coordinator.model_catalog import ModelSupply
from moonflower.coordinator.redis_store import RedisStore
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.trust import TrustLevel

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 0.25
"""How often a replica publishes its offers; a slot taken or freed is seen elsewhere this
late at most (a request sent to a replica whose slot was taken meanwhile waits in its
queue)."""
OFFER_TTL_S = 3.0
"""An offer older than this is ignored and removed: its replica stopped publishing."""
AVOID_S = 5.0
"""How long a replica that could not be reached is not offered by this one."""

_PUBLISH = """
local now = redis.call('TIME')
local stamp = now[1] * 1000 + math.floor(now[2] / 1000)
local models = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
    local offer = ARGV[i + 2]
    if offer == '' then
        redis.call('HDEL', KEYS[i], ARGV[1])
    else
        redis.call('HSET', KEYS[i], ARGV[1], stamp .. '|' .. offer)
        redis.call('PEXPIRE', KEYS[i], ARGV[2])
        redis.call('SADD', models, ARGV[i + 2 + (#KEYS - 1)])
    end
end
return stamp
"""
"""KEYS: one hash per model, then the set of models offered; ARGV: replica id, offer
lifetime (ms), each model's offer (empty: withdrawn), then each model's id."""

_READ = """
local now = redis.call('TIME')
local stamp = now[1] * 1000 + math.floor(now[2] / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local fresh = {}
for i = 1, #fields, 2 do
    local value = fields[i + 1]
    local bar = string.find(value, '|', 1, true)
    local at = tonumber(string.sub(value, 1, bar - 1))
    if stamp - at > tonumber(ARGV[1]) then
        redis.call('HDEL', KEYS[1], fields[i])
    else
        table.insert(fresh, fields[i])
        table.insert(fresh, string.sub(value, bar + 1))
    end
end
return fresh
"""
"""KEYS: the model's hash; ARGV: offer lifetime (ms). Returns fresh [replica, offer, ...]."""

_CATALOG = """
local now = redis.call('TIME')
local stamp = now[1] * 1000 + math.floor(now[2] / 1000)
local found = {}
for _, model in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local fields = redis.call('HGETALL', ARGV[2] .. model)
    if #fields == 0 then
        redis.call('SREM', KEYS[1], model)
    end
    for i = 1, #fields, 2 do
        local value = fields[i + 1]
        local bar = string.find(value, '|', 1, true)
        if stamp - tonumber(string.sub(value, 1, bar - 1)) <= tonumber(ARGV[1]) then
            table.insert(found, model)
            table.insert(found, fields[i])
            table.insert(found, string.sub(value, bar + 1))
        end
    end
end
return found
"""
"""KEYS: the set of models offered; ARGV: offer lifetime (ms), the prefix of the models'
hashes (read by name: one Redis server, not a cluster). Returns fresh [model, replica, offer,
...]; forgets models nobody offers any more."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What one replica offers for one model."""

    replica_id: str
    url: str
    """Where the other replicas reach it (`CoordinatorSettings.replica_url`)."""
    free: tuple[int, ...]
    """Free slots among its providers routable at each trust level (index: the level)."""
    slots: int
    """All slots of its providers serving the model."""
    supply: ModelSupply
    """How long a context and how many providers it has for the model."""


class Presence(Protocol):
    """Where else a model can be served."""

    async def elsewhere(self, model: str, level: TrustLevel, *, need_free: bool) -> Offer | None:
        """Another replica with a free slot for `model` at `level`, the one with most free;
        without `need_free`, the one with most slots when none is free. None if there is
        none (or only this one)."""
        ...

    def avoid(self, replica_id: str) -> None:
        """`replica_id` could not be reached: offer it to nobody for a while."""
        ...

    async def served_elsewhere(self) -> dict[str, list[ModelSupply]]:
        """Every model the other replicas serve, with what each of them has for it."""
        ...

    async def run(self) -> None:
        """Keep this replica's offers published until cancelled."""
        ...

    async def withdraw(self) -> None:
        """Take this replica's offers back for good (it is draining)."""
        ...


class LocalPresence:
    """A single coordinator: nothing is served elsewhere."""

    async def elsewhere(self, model: str, level: TrustLevel, *, need_free: bool) -> Offer | None:
        return None

    def avoid(self, replica_id: str) -> None:
        pass

    async def served_elsewhere(self) -> dict[str, list[ModelSupply]]:
        return {}

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def withdraw(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class LocalOffer:
    free: tuple[int, ...]
    slots: int
    supply: ModelSupply


def offers_of(registry: Registry) -> dict[str, LocalOffer]:
    """Per model this replica serves: free slots at each trust level, all slots, and the
    longest context and number of its providers."""
    offers: dict[str, LocalOffer] = {}
    for model, cards in registry.models().items():
        free = []
        slots = 0
        for level in TrustLevel:
            serving = registry.serving(model, level)
            free.append(
                sum(max(0, s.registration.max_concurrent_jobs - s.active_jobs) for s in serving)
            )
            if level == TrustLevel.NONE:
                slots = sum(s.registration.max_concurrent_jobs for s in serving)
        supply = ModelSupply(max(c.context_length for c in cards), len(cards))
        offers[model] = LocalOffer(tuple(free), slots, supply)
    return offers


class RedisPresence:
    """Offers shared through Redis (see the module's docstring)."""

    def __init__(
        self,
        store: RedisStore,
        registry: Registry,
        *,
        replica_id: str,
        url: str,
        every_s: float = PUBLISH_EVERY_S,
        ttl_s: float = OFFER_TTL_S,
    ) -> None:
        self._store = store
        self._registry = registry
        self.replica_id = replica_id
        self._url = url
        self._every_s = every_s
        self._ttl_ms = int(ttl_s * 1000)
        self._publish = store.script(_PUBLISH)
        self._read = store.script(_READ)
        self._catalog = store.script(_CATALOG)
        self._published: dict[str, bytes] = {}
        """What this replica last published, per model."""
        self._refreshed = 0.0
        self._avoided: dict[str, float] = {}
        self._is_withdrawn = False

    def _key(self, model: str) -> str:
        return self._store.key("presence", model)

    @property
    def _models_key(self) -> str:
        return self._store.key("presence-models")

    async def publish(self) -> None:
        """Publish what changed since last time, and everything once a third of the offer
        lifetime has passed (so it stays fresh). Nothing once withdrawn."""
        if self._is_withdrawn:
            return
        current = {
            model: orjson.dumps(
                {
                    "url": self._url,
                    "free": offer.free,
                    "slots": offer.slots,
                    "context": offer.supply.context_length,
                    "providers": offer.supply.providers,
                }
            )
            for model, offer in offers_of(self._registry).items()
        }
        now = time.monotonic()
        is_refresh = now - self._refreshed >= self._ttl_ms / 3000
        changed = {
            model: offer
            for model, offer in current.items()
            if is_refresh or self._published.get(model) != offer
        }
        gone = [model for model in self._published if model not in current]
        if not changed and not gone:
            return
        models = [*changed, *gone]
        values = [offer.decode() for offer in changed.values()] + [""] * len(gone)
        await self._store.run(
            self._publish,
            [*(self._key(model) for model in models), self._models_key],
            [self.replica_id, self._ttl_ms, *values, *models],
        )
        self._published = current
        if is_refresh:
            self._refreshed = now

    async def run(self) -> None:
        while True:
            # A failure is logged by the store; the next round publishes what changed.
            with contextlib.suppress(errors.StoreUnavailable):
                await self.publish()
            await asyncio.sleep(self._every_s)

    async def withdraw(self) -> None:
        self._is_withdrawn = True
        if not self._published:
            return
        models = list(self._published)
        try:
            await self._store.run(
                self._publish,
                [*(self._key(model) for model in models), self._models_key],
                [self.replica_id, self._ttl_ms, *[""] * len(models), *models],
            )
        except errors.StoreUnavailable:
            return  # the offers run out by themselves
        self._published = {}

    async def elsewhere(self, model: str, level: TrustLevel, *, need_free: bool) -> Offer | None:
        reply = await self._store.run(self._read, [self._key(model)], [self._ttl_ms])
        assert isinstance(reply, list)
        now = time.monotonic()
        best: Offer | None = None
        for replica_id, text in zip(reply[::2], reply[1::2], strict=True):
            if replica_id == self.replica_id or self._avoided.get(replica_id, 0.0) > now:
                continue
            offer = _offer(replica_id, text)
            if best is None or _rank(offer, level) > _rank(best, level):
                best = offer
        if best is None or (need_free and best.free[level] <= 0):
            return None
        return best

    def avoid(self, replica_id: str) -> None:
        self._avoided[replica_id] = time.monotonic() + AVOID_S

    async def served_elsewhere(self) -> dict[str, list[ModelSupply]]:
        reply = await self._store.run(
            self._catalog, [self._models_key], [self._ttl_ms, self._key("")]
        )
        assert isinstance(reply, list)
        served: dict[str, list[ModelSupply]] = {}
        for model, replica_id, text in zip(reply[::3], reply[1::3], reply[2::3], strict=True):
            if replica_id != self.replica_id:
                served.setdefault(model, []).append(_offer(replica_id, text).supply)
        return served


def _offer(replica_id: str, text: str) -> Offer:
    data = orjson.loads(text)
    supply = ModelSupply(data["context"], data["providers"])
    return Offer(replica_id, data["url"], tuple(data["free"]), data["slots"], supply)


def _rank(offer: Offer, level: TrustLevel) -> tuple[int, int]:
    return offer.free[level], offer.slots
