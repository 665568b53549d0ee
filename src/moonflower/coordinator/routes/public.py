"""Read-only routes: the models served right now and the coordinator's health.

Wiring only: the Models API answers in the caller's dialect (`caller_dialect`), its shapes
live in `dialects/openai_models` and `dialects/anthropic_models`, what it lists and how it
pages in `model_catalog`. Both need an API key.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors, wire
from moonflower.coordinator.deps import ApiCaller, ServicesDep
from moonflower.coordinator.dialects import anthropic_models, openai_models
from moonflower.coordinator.dialects.caller_dialect import speaks_anthropic
from moonflower.coordinator.model_catalog import (
    ListedModel,
    ModelSupply,
    listed_models,
    local_supply,
)
from moonflower.coordinator.services import Services, json_response

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request, services: ServicesDep, caller: ApiCaller) -> Response:
    entries, query = await catalog(services), request.query_params
    if speaks_anthropic(request):
        return json_response(anthropic_models.list_body(entries, query, services.started_at))
    return json_response(openai_models.list_body(entries, query, services.started_at))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(
    model_id: str, request: Request, services: ServicesDep, caller: ApiCaller
) -> Response:
    entries = await catalog(services)
    if speaks_anthropic(request):
        return json_response(anthropic_models.model_body(entries, model_id, services.started_at))
    return json_response(openai_models.model_body(entries, model_id, services.started_at))


async def network_supply(services: Services) -> dict[str, list[ModelSupply]]:
    """Every model served now, by this replica's providers or another replica's; only this
    replica's while Redis does not answer (a listing is better partial than refused)."""
    supply = local_supply(services.registry.models())
    try:
        others = await services.presence.served_elsewhere()
    except errors.StoreUnavailable:
        others = {}
    for model, elsewhere in others.items():
        supply.setdefault(model, []).extend(elsewhere)
    return supply


async def catalog(services: Services) -> list[ListedModel]:
    return listed_models(await network_supply(services), services.settings.model_aliases)


@router.get("/health")
async def health(services: ServicesDep) -> Response:
    return json_response(
        {
            "status": "ok",
            "protocol_version": wire.PROTOCOL_VERSION,
            "providers": len(services.registry),
            "models": len(services.registry.models()),
            "routing": services.registry.routing_stats(),
        }
    )
