"""Who is calling: API keys from `Authorization: Bearer …` or `x-api-key: …`.

Owns reading the credential headers and asking the ledger who the key belongs to; it never
logs a key and knows nothing of dialect error shapes (it raises `AuthenticationFailed`).
Callers of API keys are remembered for a few seconds (`CallerCache`), so most requests
authenticate without a database transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

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


class CallerCache:
    """Who each recently used API key belongs to, for `ttl_s` after the ledger said so.

    A key revoked meanwhile keeps working until its entry expires (at most `ttl_s`); unknown
    and revoked keys are never remembered, so they always ask the ledger. Entries are keyed
    by a hash of the key, never the key itself. `ttl_s` 0 remembers nothing.
    """

    MAX_ENTRIES = 10_000

    def __init__(
        self, db: Database, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[bytes, tuple[keys.Caller, float]] = {}

    async def caller(self, raw_key: str) -> keys.Caller | None:
        digest = hashlib.sha256(raw_key.encode()).digest()
        now = self._clock()
        entry = self._entries.get(digest)
        if entry is not None and entry[1] > now:
            return entry[0]
        caller = await keys.authenticate(self.db, raw_key)
        if caller is None or self._ttl_s <= 0:
            self._entries.pop(digest, None)
            return caller
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {d: e for d, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[digest] = (caller, now + self._ttl_s)
        return caller


async def authenticate(request: Request, callers: CallerCache) -> keys.Caller:
    raw = credential(request)
    if raw is None:
        raise errors.AuthenticationFailed(
            "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
        )
    caller = await callers.caller(raw)
    if caller is None:
        raise errors.AuthenticationFailed("Incorrect API key provided.")
    return caller


async def authenticate_account(request: Request, callers: CallerCache) -> keys.Caller:
    """An API key, or a provider token (which may read its own account, never call models)."""
    raw = credential(request)
    caller = None if raw is None else await callers.caller(raw)
    if caller is None and raw is not None:
        caller = await keys.authenticate_provider(callers.db, raw)
    if caller is None:
        return await authenticate(request, callers)  # raises the right error
    return caller


def authenticate_admin(request: Request, admin_key: SecretStr | None) -> None:
    if admin_key is None:
        raise errors.PermissionDenied("The admin API is disabled: no admin key is configured.")
    raw = credential(request)
    expected = admin_key.get_secret_value().encode()
    if raw is None or not hmac.compare_digest(raw.encode(), expected):
        raise errors.AuthenticationFailed("This operation needs the admin key.")
