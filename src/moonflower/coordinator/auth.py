"""Who is calling: API keys from `Authorization: Bearer …` or `x-api-key: …`.

Owns reading the credential headers and asking the ledger who the key belongs to; it never
logs a key and knows nothing of dialect error shapes (it raises `AuthenticationFailed`).
"""

from __future__ import annotations

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
