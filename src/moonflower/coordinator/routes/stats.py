"""`GET /v1/stats`: the network's public numbers, for the status page and anyone curious.

Providers online by model (all replicas, from presence) and by trust level (this replica's
connections, which it can vouch for), tokens per minute over the last 30 minutes, requests
and tokens in that window and ever. No key needed: nothing here names an account, a
provider or a job. Computed at most once per `stats_cache_s` (a setting) per replica, so a
popular status page costs the ledger two queries every few seconds.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.routes.public import network_supply
from moonflower.coordinator.services import Services, json_response
from moonflower.ledger import series

router = APIRouter()

WINDOW_MINUTES = 30


async def _compute(services: Services) -> dict[str, Any]:
    supply = await network_supply(services)
    by_trust: dict[str, dict[str, int]] = {}
    for (model, trust), count in services.registry.count_by_model_and_trust().items():
        by_trust.setdefault(model, {})[trust] = count
    minutes = await series.tokens_per_minute(services.db, WINDOW_MINUTES)
    totals = await series.totals(services.db)
    window_tokens = sum(minute.tokens for minute in minutes)
    return {
        "object": "network.stats",
        "generated_at": int(time.time()),
        "providers_online": sum(s.providers for offers in supply.values() for s in offers),
        "models": [
            {
                "model": model,
                "providers": sum(s.providers for s in offers),
                "by_trust_level_here": by_trust.get(model, {}),
            }
            for model, offers in sorted(supply.items())
        ],
        "window_minutes": WINDOW_MINUTES,
        "tokens_per_second": round(window_tokens / (WINDOW_MINUTES * 60), 3),
        "per_minute": [
            {
                "minute": int(m.minute.timestamp()),
                "tokens": m.tokens,
                "requests": m.requests,
                "tokens_per_second": round(m.tokens / 60, 3),
            }
            for m in minutes
        ],
        "window": {
            "requests": sum(m.requests for m in minutes),
            "tokens": window_tokens,
        },
        "all_time": {
            "requests": totals.requests,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "tokens": totals.prompt_tokens + totals.completion_tokens,
        },
    }


@router.get("/v1/stats", tags=["public"])
async def stats(services: ServicesDep) -> Response:
    cached = services.stats_cache
    now = time.monotonic()
    if cached.body is None or now - cached.at >= services.settings.stats_cache_s:
        cached.body = await _compute(services)
        cached.at = now
    return json_response(cached.body)
