"""Who is calling: API keys from `Authorization: Bearer …` or `x-api-key: …`.

Owns the rule for which header's key counts (`presented_key`), asking the ledger who a key
belongs to, and the refusals; it never logs a key and knows nothing of dialect error shapes
(it raises `AuthenticationFailed` / `PermissionDenied`). Routes reach it through the
dependencies in `deps`; the sealed transport and the provider socket call it directly.
Callers of API keys are remembered for a few seconds (`CallerCache`), so most requests
authenticate without a database transaction; the ones that do only read. Marking a key used
(once a minute at most) is written in the background, so a locked or slow store never holds
up who-is-calling; if that write fails, the mark is simply written on a later use.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import SecretStr
from starlette.requests import HTTPConnection, Request

from moonflower import errors
from moonflower.ledger import keys
from moonflower.ledger.database import Database

log = logging.getLogger(__name__)


def credential(request: HTTPConnection) -> str | None:
    """The key a request presents (`presented_key` of its two headers)."""
    header = request.headers.get("authorization")
    bearer = None
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            bearer = token
    return presented_key(bearer, request.headers.get("x-api-key"))


def presented_key(bearer_token: str | None, x_api_key: str | None) -> str | None:
    """A non-blank `Authorization: Bearer` token wins; `x-api-key` counts only without one.
    Surrounding spaces are not part of a key; a blank one is no key."""
    for value in (bearer_token, x_api_key):
        if value and value.strip():
            return value.strip()
    return None


class CallerCache:
    """Who each recently used API key belongs to, for `ttl_s` after the ledger said so.

    A key revoked meanwhile keeps working until its entry is forgotten: at once when the
    revocation is broadcast (`forget`, see `broadcast`), at the latest when it expires
    (`ttl_s`). Unknown and revoked keys are never remembered, so they always ask the ledger.
    Entries are keyed by the key's SHA-256 (as the ledger stores it), never the key itself.
    `ttl_s` 0 remembers nothing.
    """

    MAX_ENTRIES = 10_000

    def __init__(
        self, db: Database, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[bytes, tuple[keys.Caller, float]] = {}
        self._noting: dict[str, asyncio.Task[None]] = {}
        self._forgettings = 0
        """How many times entries were forgotten: a ledger read that began before one may
        have seen the key still active, so its answer is used once but not remembered."""

    async def caller(self, raw_key: str) -> keys.Caller | None:
        digest = hashlib.sha256(raw_key.encode()).digest()
        now = self._clock()
        entry = self._entries.get(digest)
        if entry is not None and entry[1] > now:
            return entry[0]
        forgettings = self._forgettings
        caller = await keys.authenticate(self.db, raw_key)
        if caller is not None:
            self.note_use(caller)
        if caller is None or self._ttl_s <= 0 or forgettings != self._forgettings:
            self._entries.pop(digest, None)
            return caller
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {d: e for d, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[digest] = (caller, now + self._ttl_s)
        return caller

    def forget(self, key_hash: str) -> None:
        """Forget the key whose SHA-256 is `key_hash` (hex): it was revoked."""
        self._forgettings += 1
        try:
            self._entries.pop(bytes.fromhex(key_hash), None)
        except ValueError:
            log.warning("asked to forget a key by a malformed hash")

    def forget_all(self) -> None:
        """Forget every key (revocations may have been missed)."""
        self._forgettings += 1
        self._entries.clear()

    def note_use(self, caller: keys.Caller) -> None:
        """Mark the caller's key used, in the background, if it is due (one write a
        minute at most, one at a time per key)."""
        if caller.key_id in self._noting or not caller.is_use_stale(datetime.now(UTC)):
            return
        task = asyncio.create_task(self._note_use(caller))
        self._noting[caller.key_id] = task
        task.add_done_callback(lambda _done: self._noting.pop(caller.key_id, None))

    async def _note_use(self, caller: keys.Caller) -> None:
        try:
            await keys.note_use(self.db, caller)
        except errors.StoreUnavailable:
            log.warning("could not mark key %s used; a later use will", caller.key_id)
        except Exception:  # a background task: nobody else would see it
            log.exception("marking key %s used failed", caller.key_id)

    async def marks_written(self) -> None:
        """Wait for the use marks being written (for shutdown and tests)."""
        await asyncio.gather(*self._noting.values(), return_exceptions=True)


async def authenticate(request: Request, callers: CallerCache) -> keys.Caller:
    """The API key's caller (the sealed transport's check, before it opens a body)."""
    return await api_key_caller(credential(request), callers)


async def api_key_caller(raw: str | None, callers: CallerCache) -> keys.Caller:
    if raw is None:
        raise errors.AuthenticationFailed(
            "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
        )
    caller = await callers.caller(raw)
    if caller is None:
        raise errors.AuthenticationFailed("Incorrect API key provided.")
    return caller


async def account_key_caller(raw: str | None, callers: CallerCache) -> keys.Caller:
    """An API key, or a provider token (which may read its own account, never call models)."""
    caller = None if raw is None else await callers.caller(raw)
    if caller is None and raw is not None:
        caller = await keys.find_caller(callers.db, raw, "provider")
        if caller is not None:
            callers.note_use(caller)
    if caller is None:
        return await api_key_caller(raw, callers)  # raises the right error
    return caller


def check_admin_key(raw: str | None, admin_key: SecretStr | None) -> None:
    if admin_key is None:
        raise errors.PermissionDenied("The admin API is disabled: no admin key is configured.")
    expected = admin_key.get_secret_value().encode()
    if raw is None or not hmac.compare_digest(raw.encode(), expected):
        raise errors.AuthenticationFailed("This operation needs the admin key.")
