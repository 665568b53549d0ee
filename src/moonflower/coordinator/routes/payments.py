"""Money routes for account holders: balance, usage, and a provider's earnings.

Amounts are integer micro-USD (`*_micro_usd`) with the same amount as an exact decimal
dollar string (`*_usd`). Usage and earnings are lists in OpenAI's page shape (`data`,
`has_more`, `first_id`, `last_id`; continue with `?after=<last_id>`), and carry counts,
costs and receipt hashes only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.deps import AccountCaller, ServicesDep
from moonflower.coordinator.services import json_response
from moonflower.ledger import statements
from moonflower.ledger.accounts import AccountInfo, get_account
from moonflower.ledger.book import format_usd
from moonflower.ledger.database import Database

router = APIRouter()

DEFAULT_PAGE = 20
MAX_PAGE = 100


def money(name: str, micro_usd: int) -> dict[str, Any]:
    return {f"{name}_micro_usd": micro_usd, f"{name}_usd": format_usd(micro_usd)}


def balance_body(account: AccountInfo) -> dict[str, Any]:
    return {
        "object": "balance",
        "account_id": account.id,
        "account_name": account.name,
        "kind": account.kind,
        **money("balance", account.balance_micro_usd),
        **money("held", account.held_micro_usd),
        **money("available", account.available_micro_usd),
        **money("withdrawable", account.withdrawable_micro_usd),
    }


@router.get("/v1/payments/balance")
async def balance(services: ServicesDep, caller: AccountCaller) -> Response:
    return json_response(balance_body(await get_account(services.db, caller.account_id)))


@router.get("/v1/payments/usage")
async def usage(request: Request, services: ServicesDep, caller: AccountCaller) -> Response:
    return await usage_page(request, services.db, caller.account_id)


async def usage_page(request: Request, db: Database, account_id: str) -> Response:
    """A page of the account's usage, as the request's `limit` and `after` ask."""
    page = await statements.usage(
        db, account_id, limit=page_limit(request), after=request.query_params.get("after")
    )
    return json_response(
        page_body([usage_body(line) for line in page.lines], has_more=page.has_more)
    )


def usage_body(line: statements.UsageLine) -> dict[str, Any]:
    return {
        "object": "usage",
        "id": line.job_id,
        "created": int(line.created_at.timestamp()),
        "model": line.model,
        "provider_id": line.provider_id,
        "status": line.status,
        "prompt_tokens": line.prompt_tokens,
        "completion_tokens": line.completion_tokens,
        **money("cost", line.cost_micro_usd),
        "receipt_hash": line.receipt_hash,
    }


@router.get("/v1/provider/earnings")
async def earnings(request: Request, services: ServicesDep, caller: AccountCaller) -> Response:
    account = await get_account(services.db, caller.account_id)
    if account.kind != "provider":
        raise errors.PermissionDenied("Earnings belong to provider accounts; this is not one.")
    page = await statements.earnings(
        services.db, account.id, limit=page_limit(request), after=request.query_params.get("after")
    )
    body = page_body(
        [
            {
                "object": "earning",
                "id": line.job_id,
                "created": int(line.created_at.timestamp()),
                "model": line.model,
                "provider_id": line.provider_id,
                "prompt_tokens": line.prompt_tokens,
                "completion_tokens": line.completion_tokens,
                **money("earned", line.earned_micro_usd),
            }
            for line in page.lines
        ],
        has_more=page.has_more,
    )
    total = await statements.total_earned(services.db, account.id)
    return json_response({**body, **money("total_earned", total), "balance": balance_body(account)})


def page_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise errors.InvalidRequest(
            f"'limit' must be a whole number from 1 to {MAX_PAGE}.", param="limit"
        )
    return int(raw)


def page_body(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
