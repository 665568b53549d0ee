"""The operator's console: `/console/api/admin/…` — the fleet, accounts, credit, prices and
clearing an untrusted identity. Only users marked admin (`AdminUser`) reach these.

Every change goes through the ledger's own functions (`book.deposit`, `pricing`,
`providers.clear_key`), as the operator's CLI does, and a price change is broadcast to every
replica like the admin API's. Live providers are this replica's connections, with each
identity's record from the ledger.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.console_bodies import read_model
from moonflower.coordinator.console_session import AdminUser
from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.routes.console_data import live_body, session_fingerprint
from moonflower.coordinator.routes.payments import balance_body
from moonflower.coordinator.services import json_response
from moonflower.ledger import accounts, book, providers
from moonflower.ledger.book import parse_usd
from moonflower.ledger.pricing import MAX_PRICE, Price, store_pricing

router = APIRouter(prefix="/console/api/admin", tags=["console admin"])


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_id: str = Field(min_length=1, max_length=64)
    usd: str = Field(min_length=1, max_length=32)
    """Dollars, like `12.50` (at most 6 decimals)."""
    memo: str = Field(default="console credit", max_length=200)


class ModelPriceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    input_price: StrictInt = Field(ge=0, le=MAX_PRICE)
    output_price: StrictInt = Field(ge=0, le=MAX_PRICE)
    """Micro-USD per million tokens."""


@router.get("/providers")
async def fleet(admin: AdminUser, services: ServicesDep) -> Response:
    identities = {i.fingerprint: i for i in await providers.list_identities(services.db)}
    data = []
    for session in services.registry:
        fingerprint = session_fingerprint(session)
        identity = identities.get(fingerprint or "")
        data.append(
            {
                "object": "provider",
                **live_body(session),
                "fingerprint": fingerprint,
                "account_id": session.account_id,
                "account_name": identity.account_name if identity else None,
                "reputation": {
                    "jobs": (identity.jobs if identity else 0) + session.stats.jobs_ended,
                    "failures": (identity.failures if identity else 0)
                    + getattr(session.stats, "jobs_failed", 0),
                    "reliability": round(session.stats.reliability, 3),
                },
            }
        )
    untrusted = [
        {
            "fingerprint": i.fingerprint,
            "account_name": i.account_name,
            "reason": i.untrusted_reason,
            "since": int(i.untrusted_at.timestamp()) if i.untrusted_at else None,
        }
        for i in identities.values()
        if i.untrusted_reason is not None
    ]
    return json_response({"object": "list", "data": data, "untrusted": untrusted})


@router.get("/accounts")
async def all_accounts(admin: AdminUser, services: ServicesDep) -> Response:
    listed = await accounts.list_accounts(services.db)
    return json_response({"object": "list", "data": [balance_body(a) for a in listed]})


@router.post("/credit")
async def grant_credit(request: Request, admin: AdminUser, services: ServicesDep) -> Response:
    grant = await read_model(request, Grant)
    try:
        amount = parse_usd(grant.usd)
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc), param="usd") from None
    await book.deposit(services.db, grant.account_id, amount, memo=grant.memo)
    return json_response(balance_body(await accounts.get_account(services.db, grant.account_id)))


@router.post("/prices")
async def set_price(request: Request, admin: AdminUser, services: ServicesDep) -> Response:
    update = await read_model(request, ModelPriceUpdate)
    price = Price(update.input_price, update.output_price)
    await store_pricing(services.db, model_price=(update.model, price), policy=None)
    await services.broadcast.prices_changed()
    return json_response(_price_body(update.model, price))


def _price_body(model: str, price: Price) -> dict[str, Any]:
    return {
        "model": model,
        "input_price": price.input_micro_usd_per_mtok,
        "output_price": price.output_micro_usd_per_mtok,
    }


@router.post("/identities/{fingerprint}/clear")
async def clear_identity(fingerprint: str, admin: AdminUser, services: ServicesDep) -> Response:
    identity = await providers.find_identity(services.db, fingerprint)
    if identity is None or identity.fingerprint != fingerprint:
        raise errors.RouteNotFound("No provider identity has this fingerprint.")
    cleared = await providers.clear_key(services.db, fingerprint)
    return json_response(
        {
            "fingerprint": fingerprint,
            "cleared": not cleared.is_empty,
            "account_verdicts": cleared.account_verdicts,
        }
    )
