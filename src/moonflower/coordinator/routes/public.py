"""Read-only routes: the models served right now and the coordinator's health."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.auth import authenticate
from moonflower.coordinator.services import Services, json_response

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    services = Services.of(request)
    await authenticate(request, services.callers)
    return json_response({"object": "list", "data": model_objects(services)})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    services = Services.of(request)
    await authenticate(request, services.callers)
    found = [m for m in model_objects(services) if m["id"] == model_id]
    if not found:
        raise errors.ModelNotFound(model_id)
    return json_response(found[0])


def model_objects(services: Services) -> list[dict[str, object]]:
    """The models served right now, then every alias whose target is served right now."""
    served = services.registry.models()
    objects: list[dict[str, object]] = [
        {
            "id": model_id,
            "object": "model",
            "created": services.started_at,
            "owned_by": "moonflower",
            "context_length": max(card.context_length for card in cards),
            "providers": len(cards),
        }
        for model_id, cards in sorted(served.items())
    ]
    aliases = services.settings.model_aliases
    for alias, target in sorted(aliases.items()):
        if target in served and alias not in served:
            objects.append(
                {
                    "id": alias,
                    "object": "model",
                    "created": services.started_at,
                    "owned_by": "moonflower",
                    "alias_of": target,
                    "context_length": max(card.context_length for card in served[target]),
                    "providers": len(served[target]),
                }
            )
    return objects


@router.get("/health")
async def health(request: Request) -> Response:
    services = Services.of(request)
    return json_response(
        {
            "status": "ok",
            "providers": len(services.registry),
            "models": len(services.registry.models()),
            "routing": services.registry.routing_stats(),
        }
    )
