"""`build_services`: every long-lived part of a coordinator, built in one place.

Each part gets what it works with from here, never builds it itself: the dispatcher is
handed its queues, rate limiter, prices, leases, holds and close path; the settler its
prices, leases and limiter; and so on. What is shared between replicas is chosen here once:
with `redis_url` set, rate limits, presence, the broadcast and the line of waiting requests
go through Redis; without it, the same interfaces run in memory (`moonflower up`).
"""

from __future__ import annotations

import time
import uuid

from moonflower.coordinator.auth import CallerCache
from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.broadcast import (
    Broadcast,
    MemoryBroadcast,
    RedisBroadcast,
    ReplicaCaches,
)
from moonflower.coordinator.closing import JobCloser
from moonflower.coordinator.dispatch import Dispatcher
from moonflower.coordinator.forwarding import Forwarder
from moonflower.coordinator.holds import Holds
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.limits import RateLimiter, RateLimits
from moonflower.coordinator.metrics import Metrics
from moonflower.coordinator.presence import LocalPresence, Presence, RedisPresence
from moonflower.coordinator.prompt_count import PromptCounter
from moonflower.coordinator.queueing import ModelQueues
from moonflower.coordinator.redis_limits import RedisRateLimits
from moonflower.coordinator.redis_store import RedisStore
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.reputation import Reputation
from moonflower.coordinator.services import Services
from moonflower.coordinator.settler import Settler
from moonflower.coordinator.ticket_line import RedisTicketLine
from moonflower.coordinator.trust import TrustLevel
from moonflower.coordinator.turns import Turns
from moonflower.ledger.database import Database, default_database_url
from moonflower.settings import CoordinatorSettings


async def build_services(settings: CoordinatorSettings, metrics: Metrics | None = None) -> Services:
    """Every part, counting into `metrics` (a new registry if none is given)."""
    metrics = metrics or Metrics()
    url = settings.database_url or default_database_url(settings.data_dir)
    db = await Database.open(url, timeout_s=settings.database_timeout_s)
    metrics.watch_database(db)
    registry = Registry(
        default_floor=TrustLevel.parse(settings.min_trust),
        freshness_s=settings.challenge_interval_s + settings.challenge_slack_s,
    )
    prompts = PromptCounter.from_settings(settings)
    # Live state the replicas share goes through one Redis client, when there is a Redis.
    redis = RedisStore.connect(settings.redis_url) if settings.redis_url else None
    limits: RateLimiter = (
        RedisRateLimits(
            redis, settings.rate_limit_requests_per_minute, settings.rate_limit_tokens_per_minute
        )
        if redis is not None
        else RateLimits(
            settings.rate_limit_requests_per_minute, settings.rate_limit_tokens_per_minute
        )
    )
    pricing = Pricing(db, settings)
    leases = HoldLeases(db, settings.hold_lease_s)
    queues = ModelQueues(settings.queue_max_waiting, settings.queue_max_wait_s, metrics=metrics)
    settler = Settler(db, pricing, leases, limits, metrics=metrics)
    dispatcher = Dispatcher(
        registry,
        db,
        settings,
        pricing=pricing,
        leases=leases,
        queues=queues,
        limits=limits,
        holds=Holds(db, leases),
        closer=JobCloser(settler, metrics),
        prompt_counter=prompts,
    )
    callers = CallerCache(db, settings.api_key_cache_s)
    broadcast: Broadcast = RedisBroadcast(redis) if redis is not None else MemoryBroadcast()
    broadcast.subscribe(ReplicaCaches(callers, pricing))
    presence: Presence = LocalPresence()
    forwarder = None
    if redis is not None:
        replica_id = uuid.uuid4().hex[:12]
        presence = RedisPresence(redis, registry, replica_id=replica_id, url=settings.reachable_url)
        turns = Turns(
            RedisTicketLine(redis),
            registry,
            queues.waiting,
            replica_id=replica_id,
            url=settings.reachable_url,
            room=settings.queue_max_waiting,
            max_wait_s=settings.queue_max_wait_s,
        )
        turns.announce = broadcast.line_moved
        broadcast.subscribe(turns)
        queues.listen(freed=turns.slot_freed, taken=turns.slot_taken)
        forwarder = Forwarder(
            presence, registry, turns, replica_id=replica_id, aliases=settings.model_aliases
        )
    metrics.scraped.providers = registry.count_by_model_and_trust
    metrics.scraped.queue_depths = queues.depths
    metrics.scraped.open_holds = leases.__len__
    return Services(
        metrics=metrics,
        settings=settings,
        db=db,
        registry=registry,
        dispatcher=dispatcher,
        pricing=pricing,
        leases=leases,
        queues=queues,
        settler=settler,
        callers=callers,
        reputation=Reputation(db, registry, allow_anonymous=settings.allow_anonymous_providers),
        started_at=int(time.time()),
        prompts=prompts,
        broadcast=broadcast,
        redis=redis,
        presence=presence,
        forwarder=forwarder,
    )
