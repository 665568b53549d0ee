"""What a signed-in user sees in the console: `/console/api/balance`, `usage`, `spending`,
`machines` and `earnings`.

Everything is read for the signed-in user's own two accounts (consumer and provider), never
for an id the browser names, so nobody can read another's. Machines are the provider
identities of the user's provider account, from the ledger (every replica's), with what this
replica sees live of those connected to it; one connected to another replica shows as online
by its recent `last_seen`. Counts, money and timings only.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.console_session import SignedInUser
from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.routes.payments import balance_body, money, usage_page
from moonflower.coordinator.services import json_response
from moonflower.coordinator.session import ProviderSession
from moonflower.crypto.signing import key_fingerprint
from moonflower.ledger import providers, series, statements
from moonflower.ledger.accounts import get_account
from moonflower.ledger.series import DayTotal

router = APIRouter(prefix="/console/api", tags=["console"])

DEFAULT_DAYS = 30
ONLINE_WITHIN = timedelta(minutes=2)
"""A machine seen this recently is online, whichever replica it is connected to."""


def days_param(request: Request) -> int:
    raw = request.query_params.get("days", str(DEFAULT_DAYS))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= series.MAX_DAYS:
        raise errors.InvalidRequest(
            f"'days' must be a whole number from 1 to {series.MAX_DAYS}.", param="days"
        )
    return int(raw)


def days_body(totals: list[DayTotal]) -> list[dict[str, Any]]:
    return [
        {"day": total.day.isoformat(), "jobs": total.jobs, **money("amount", total.micro_usd)}
        for total in totals
    ]


@router.get("/balance")
async def balance(user: SignedInUser, services: ServicesDep) -> Response:
    consumer = await get_account(services.db, user.consumer_account_id)
    provider = await get_account(services.db, user.provider_account_id)
    return json_response({**balance_body(consumer), "provider": balance_body(provider)})


@router.get("/usage")
async def usage(request: Request, user: SignedInUser, services: ServicesDep) -> Response:
    return await usage_page(request, services.db, user.consumer_account_id)


@router.get("/spending")
async def spending(request: Request, user: SignedInUser, services: ServicesDep) -> Response:
    totals = await series.daily_spending(services.db, user.consumer_account_id, days_param(request))
    return json_response({"object": "series", "data": days_body(totals)})


@router.get("/earnings")
async def earnings(request: Request, user: SignedInUser, services: ServicesDep) -> Response:
    account_id = user.provider_account_id
    totals = await series.daily_earnings(services.db, account_id, days_param(request))
    total = await statements.total_earned(services.db, account_id)
    account = await get_account(services.db, account_id)
    return json_response(
        {
            "object": "series",
            "data": days_body(totals),
            **money("total_earned", total),
            "balance": balance_body(account),
        }
    )


def session_fingerprint(session: ProviderSession) -> str | None:
    statement = session.trust.statement
    return None if statement is None else key_fingerprint(statement.signing_key)


def live_body(session: ProviderSession) -> dict[str, Any]:
    trust = session.trust
    return {
        "provider_id": session.id,
        "trust_level": "untrusted" if trust.untrusted_reason else trust.level.label,
        "models": [card.id for card in session.registration.models],
        "slots": session.registration.max_concurrent_jobs,
        "active_jobs": session.active_jobs,
        "load": round(session.load, 3),
        "tokens_per_s": None
        if session.stats.decode_tps is None
        else round(session.stats.decode_tps, 1),
        "jobs_served": session.jobs_served,
        "jobs_this_connection": session.stats.jobs_ended,
        "failures_this_connection": getattr(session.stats, "jobs_failed", 0),
        "connected_s": round(time.monotonic() - session.connected_at),
        "is_draining": session.is_draining,
    }


def live_by_fingerprint(registry: Registry, account_id: str | None) -> dict[str, dict[str, Any]]:
    return {
        fingerprint: live_body(session)
        for session in registry
        if (account_id is None or session.account_id == account_id)
        and (fingerprint := session_fingerprint(session)) is not None
    }


@router.get("/machines")
async def machines(user: SignedInUser, services: ServicesDep) -> Response:
    """The user's provider machines: every identity its provider account ever proved, with
    what is known live."""
    account_id = user.provider_account_id
    identities = [
        identity
        for identity in await providers.list_identities(services.db)
        if identity.account_id == account_id
    ]
    live = live_by_fingerprint(services.registry, account_id)
    now = datetime.now(UTC)
    data = [
        {
            "object": "machine",
            "fingerprint": identity.fingerprint,
            "first_seen": int(identity.first_seen_at.timestamp()),
            "last_seen": int(identity.last_seen_at.timestamp()),
            "online": identity.fingerprint in live or now - identity.last_seen_at < ONLINE_WITHIN,
            # The record gains a connection's jobs when it ends; add the live one's.
            "jobs": identity.jobs + _live(live, identity.fingerprint, "jobs_this_connection"),
            "failures": identity.failures
            + _live(live, identity.fingerprint, "failures_this_connection"),
            "untrusted_reason": identity.untrusted_reason,
            "live": live.get(identity.fingerprint),
        }
        for identity in identities
    ]
    return json_response({"object": "list", "data": data})


def _live(live: dict[str, dict[str, Any]], fingerprint: str, field: str) -> int:
    connection = live.get(fingerprint)
    return int(connection[field]) if connection else 0
