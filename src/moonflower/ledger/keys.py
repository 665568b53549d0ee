"""API keys: issue, authenticate, list and revoke.

Owns the key format ("mf-" followed by 43 URL-safe characters) and the rule that a raw key
exists only in the value `create_key` returns: the database holds its SHA-256 and a short
display prefix, and nothing here stores or logs the key. Decides nothing about HTTP; callers
turn a `None` from `authenticate` into their own authentication error.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update

from moonflower.errors import InvalidRequest
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account, ApiKey

KEY_PREFIX = "mf-"
_TOKEN_BYTES = 32
_KEY_LENGTH = len(KEY_PREFIX) + 43  # token_urlsafe(32) is 43 characters long
_KEY_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
DISPLAY_PREFIX_CHARS = 11
ELLIPSIS = "…"
# last_used_at is for people, not for auditing: one write a minute per key is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str
    """The raw key. Shown to its owner once; the ledger cannot recover it."""
    key_id: str
    display_prefix: str
    account_id: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    display_prefix: str
    account_id: str
    account_name: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is making a request, as established by a valid API key."""

    account_id: str
    key_id: str


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _is_well_formed(raw_key: str) -> bool:
    return (
        len(raw_key) == _KEY_LENGTH
        and raw_key.startswith(KEY_PREFIX)
        and _KEY_ALPHABET.issuperset(raw_key[len(KEY_PREFIX) :])
    )


def _check_name(value: str | None, param: str) -> None:
    if value is not None and not 0 < len(value) <= MAX_NAME_LENGTH:
        raise InvalidRequest(f"'{param}' must be 1 to {MAX_NAME_LENGTH} characters", param=param)


async def create_key(
    db: Database, *, account_name: str = "default", name: str | None = None
) -> CreatedKey:
    """Issue a new key for `account_name`, creating that account if it does not exist."""
    _check_name(account_name, "account_name")
    _check_name(name, "name")
    raw_key = KEY_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    key_id = uuid.uuid4().hex
    display_prefix = raw_key[:DISPLAY_PREFIX_CHARS] + ELLIPSIS
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        new_account = db.insert_on_conflict(Account).values(
            id=uuid.uuid4().hex, name=account_name, created_at=now
        )
        await session.execute(new_account.on_conflict_do_nothing(index_elements=[Account.name]))
        account_id = (
            await session.execute(select(Account.id).where(Account.name == account_name))
        ).scalar_one()
        session.add(
            ApiKey(
                id=key_id,
                account_id=account_id,
                key_hash=_hash(raw_key),
                display_prefix=display_prefix,
                name=name,
                created_at=now,
            )
        )
    return CreatedKey(
        key=raw_key, key_id=key_id, display_prefix=display_prefix, account_id=account_id
    )


async def authenticate(db: Database, raw_key: str) -> Caller | None:
    """The caller a key belongs to, or None if it is malformed, unknown or revoked."""
    if not _is_well_formed(raw_key):
        return None
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        row = (
            await session.execute(
                select(ApiKey.id, ApiKey.account_id, ApiKey.revoked_at, ApiKey.last_used_at).where(
                    ApiKey.key_hash == _hash(raw_key)
                )
            )
        ).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        stale = now - LAST_USED_RESOLUTION
        if row.last_used_at is None or row.last_used_at <= stale:
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == row.id)
                .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= stale))
                .values(last_used_at=now)
            )
        return Caller(account_id=row.account_id, key_id=row.id)


async def list_keys(db: Database) -> list[KeyInfo]:
    """Every key ever issued, revoked ones included, oldest first."""
    query = (
        select(ApiKey, Account.name)
        .join(Account, ApiKey.account_id == Account.id)
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    async with db.sessions() as session:
        rows = (await session.execute(query)).all()
    return [
        KeyInfo(
            key_id=key.id,
            display_prefix=key.display_prefix,
            account_id=key.account_id,
            account_name=account_name,
            name=key.name,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )
        for key, account_name in rows
    ]


async def revoke_key(db: Database, key_id_or_prefix: str) -> bool:
    """Revoke one active key, named by its id, its display prefix (or a start of it), or the
    raw key itself. Returns False, revoking nothing, unless exactly one active key matches."""
    ident = key_id_or_prefix.strip().removesuffix(ELLIPSIS)
    if not ident:
        return False
    # substr, not LIKE: SQLite's LIKE ignores case, and keys are case-sensitive.
    matches = or_(
        ApiKey.id == ident,
        func.substr(ApiKey.display_prefix, 1, len(ident)) == ident,
        ApiKey.key_hash == _hash(ident),
    )
    async with db.sessions.begin() as session:
        found = (
            await session.execute(
                select(ApiKey.id).where(ApiKey.revoked_at.is_(None), matches).limit(2)
            )
        ).scalars()
        key_ids = list(found)
        if len(key_ids) != 1:
            return False
        await session.execute(
            update(ApiKey).where(ApiKey.id == key_ids[0]).values(revoked_at=datetime.now(UTC))
        )
    return True
