"""The coordinator's long-lived parts, built once in `create_app` and reached from requests.

Holds references only; it owns no behaviour beyond building JSON responses with orjson.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response

from moonflower.coordinator.auth import CallerCache
from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.broadcast import Broadcast
from moonflower.coordinator.dispatch import Dispatcher
from moonflower.coordinator.forwarding import Forwarder
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.metrics import Metrics
from moonflower.coordinator.presence import LocalPresence, Presence
from moonflower.coordinator.prompt_count import PromptCounter
from moonflower.coordinator.queueing import ModelQueues
from moonflower.coordinator.redis_store import RedisStore
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.reputation import Reputation
from moonflower.coordinator.settler import Settler
from moonflower.ledger.database import Database
from moonflower.settings import CoordinatorSettings


@dataclass(slots=True)
class StatsCache:
    """The public stats as last computed (`routes/stats.py`), and when (monotonic s)."""

    body: dict[str, Any] | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Services:
    settings: CoordinatorSettings
    db: Database
    registry: Registry
    dispatcher: Dispatcher
    pricing: Pricing
    """The price list in force (cached; every replica reads the same)."""
    leases: HoldLeases
    """The leases on this replica's holds, and the sweep of holds whose replica is gone."""
    queues: ModelQueues
    """This replica's requests waiting for one of its providers."""
    settler: Settler
    """Writes settlements to the ledger in batches."""
    callers: CallerCache
    reputation: Reputation
    """Who may serve; verdicts that outlast a connection."""
    started_at: int
    """Unix time the coordinator started (the `created` of the models it lists)."""
    prompts: PromptCounter
    """Counts prompt tokens with the model's own tokenizer, where it knows the weights."""
    broadcast: Broadcast
    """Tells every replica's caches that a key was revoked or the prices changed."""
    metrics: Metrics = field(default_factory=Metrics)
    """What this replica counts for Prometheus (`GET /metrics`)."""
    stats_cache: StatsCache = field(default_factory=StatsCache)
    redis: RedisStore | None = None
    """The Redis client the replicas share live state through; None keeps it all in memory."""
    presence: Presence = field(default_factory=LocalPresence)
    """Where the other replicas have free slots for each model (and where this one has)."""
    forwarder: Forwarder | None = None
    """Hands requests to the replica that can serve them; None for a single coordinator."""

    async def close(self) -> None:
        """Close the connections these services opened (at shutdown, after settling)."""
        if self.forwarder is not None:
            await self.forwarder.aclose()
        await self.broadcast.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()

    @staticmethod
    def of(connection: HTTPConnection) -> Services:
        services: Services = connection.app.state.services
        return services


def json_response(
    content: Any, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )
