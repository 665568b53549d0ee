"""`GET /metrics`: this replica's numbers in Prometheus's text format (`coordinator/metrics`).

Open to whoever reaches it, like `/health`: it holds counts and timings by route and model,
never content, keys or accounts. Operators who do not want the world to see their traffic
keep it off the public listener (docs/observability.md).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE)
