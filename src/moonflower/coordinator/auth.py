"""Who is calling: API keys from `Authorization: Bearer …` or `x-api-key: …`.

Owns reading the credential headers and asking the ledger who the key belongs to; it never
logs a key and knows nothing of dialect error shapes (it raises `AuthenticationFailed`).
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import HTTPConnection, Request

from moonflower import errors
from moonflower.ledger import keys
from moonflower.ledger.database import Database


def credential(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


async def authenticate(request: Request, db: Database) -> keys.Caller:
    raw = credential(request)
    if raw is None:
        raise errors.AuthenticationFailed(
            "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
        )
    caller = await keys.authenticate(db, raw)
    if caller is None:
        raise errors.AuthenticationFailed("Incorrect API key provided.")
    return caller


async def authenticate_account(request: Request, db: Database) -> keys.Caller:
    """An API key, or a provider token (which may read its own account, never call models)."""
    raw = credential(request)
    caller = None if raw is None else await keys.authenticate(db, raw)
    if caller is None and raw is not None:
        caller = await keys.authenticate_provider(db, raw)
    if caller is None:
        return await authenticate(request, db)  # raises the right error
    return caller


def authenticate_admin(request: Request, admin_key: SecretStr | None) -> None:
    if admin_key is None:
        raise errors.PermissionDenied("The admin API is disabled: no admin key is configured.")
    raw = credential(request)
    expected = admin_key.get_secret_value().encode()
    if raw is None or not hmac.compare_digest(raw.encode(), expected):
        raise errors.AuthenticationFailed("This operation needs the admin key.")
