"""The public attestation feed: every connected provider, with its signed statement so anyone
can verify it again, its trust level and standing, when it last passed a challenge, and what
it serves. No authentication; nothing here is secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.services import json_response
from moonflower.coordinator.session import ProviderSession

router = APIRouter()


@router.get("/v1/providers/attestation")
async def attestation_feed(services: ServicesDep) -> Response:
    registry = services.registry
    providers = [feed_entry(session, registry.freshness_s) for session in registry]
    return json_response({"object": "list", "data": providers})


def feed_entry(session: ProviderSession, freshness_s: float) -> dict[str, Any]:
    trust = session.trust
    signed = trust.signed_statement
    statement = trust.statement
    return {
        "provider_id": session.id,
        "trust_level": trust.level.label,
        "is_untrusted": trust.untrusted_reason is not None,
        "untrusted_reason": trust.untrusted_reason,
        "is_attested": session.is_routable(trust.level, freshness_s) and statement is not None,
        "statement": None
        if signed is None
        else {"json": signed.json_text, "signature": signed.signature},
        "statement_problem": trust.statement_problem,
        "last_challenge_passed_at": trust.last_challenge_passed_at,
        "challenges_passed": trust.challenges_passed,
        "models": [card.model_dump(mode="json") for card in session.registration.models],
        "hardware": session.registration.hardware.model_dump(mode="json"),
    }
