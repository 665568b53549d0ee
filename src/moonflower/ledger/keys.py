"""API keys and provider tokens: issue, authenticate, list and revoke.

Owns the key formats and who may hold which. An API key ("mf-" followed by 43 URL-safe
characters) calls the inference API for its account; a provider token ("mfp-" and the same 43
characters) connects provider machines that earn for a `provider` account, and is never
accepted as an API key (nor an API key as a provider token). A raw key exists only in the
value `create_key` returns: the database holds its SHA-256 and a short display prefix, and
nothing here stores or logs the key. Decides nothing about HTTP or WebSockets; callers turn a
`None` from `authenticate` or `authenticate_provider` into their own authentication error.

Authenticating only reads (it takes no write lock, so a busy or locked store does not hold
up who-is-calling); when a key was last marked used more than a minute ago, `note_use` writes
the new time, and callers decide whether that write waits (`authenticate_provider` does it
inline; the coordinator's API-key cache does it in the background).
"""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from moonflower.errors import InvalidRequest
from moonflower.ledger.accounts import AccountKind
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account, ApiKey

KeyPurpose = Literal["api", "provider"]
KEY_PURPOSES: tuple[str, ...] = get_args(KeyPurpose)
KEY_PREFIX = "mf-"
PROVIDER_PREFIX = "mfp-"
_TOKEN_BYTES = 32
_TOKEN_LENGTH = 43  # token_urlsafe(32) is 43 characters long
_KEY_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
DISPLAY_TOKEN_CHARS = 8
"""How much of the secret part a display prefix shows, after the "mf-" or "mfp-"."""
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
    purpose: KeyPurpose


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    display_prefix: str
    account_id: str
    account_name: str
    account_kind: str
    purpose: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is making a request, as established by a valid API key or provider token."""

    account_id: str
    key_id: str
    last_used_at: datetime | None = field(default=None, compare=False)
    """When the key was last marked used, as authentication read it (see `note_use`)."""

    def is_use_stale(self, now: datetime) -> bool:
        """Whether `note_use` would write: the mark is missing or a minute old."""
        return self.last_used_at is None or self.last_used_at <= now - LAST_USED_RESOLUTION


def _prefix(purpose: KeyPurpose) -> str:
    return PROVIDER_PREFIX if purpose == "provider" else KEY_PREFIX


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _is_well_formed(raw_key: str, purpose: KeyPurpose) -> bool:
    prefix = _prefix(purpose)
    return (
        len(raw_key) == len(prefix) + _TOKEN_LENGTH
        and raw_key.startswith(prefix)
        and _KEY_ALPHABET.issuperset(raw_key[len(prefix) :])
    )


def _check_name(value: str | None, param: str) -> None:
    if value is not None and not 0 < len(value) <= MAX_NAME_LENGTH:
        raise InvalidRequest(f"'{param}' must be 1 to {MAX_NAME_LENGTH} characters", param=param)


def check_key_name(name: str | None) -> None:
    """`InvalidRequest` unless a key's name is None or 1 to 200 characters."""
    _check_name(name, "name")


def _check_holder(purpose: KeyPurpose, account_name: str, account_kind: str) -> None:
    """Provider tokens earn for provider accounts only; nobody holds keys to the system
    accounts, whose money moves only through the book."""
    if account_kind not in ("consumer", "provider"):
        raise InvalidRequest(
            f"The {account_kind} account {account_name!r} cannot hold keys.", param="account_name"
        )
    if purpose == "provider" and account_kind != "provider":
        raise InvalidRequest(
            f"Account {account_name!r} is a {account_kind} account; provider tokens belong "
            "to provider accounts.",
            param="account_name",
        )


async def create_key(
    db: Database,
    *,
    account_name: str = "default",
    name: str | None = None,
    purpose: KeyPurpose = "api",
) -> CreatedKey:
    """Issue a new API key (or, for purpose "provider", a provider token) for `account_name`,
    creating that account if it does not exist: a consumer account for an API key, a provider
    account for a provider token. Refuses a provider token for a consumer account."""
    if purpose not in KEY_PURPOSES:
        raise InvalidRequest(
            f"A key's purpose is one of {', '.join(KEY_PURPOSES)}.", param="purpose"
        )
    _check_name(account_name, "account_name")
    if account_name != account_name.strip():
        raise InvalidRequest("An account name has no surrounding spaces.", param="account_name")
    _check_name(name, "name")
    new_account_kind: AccountKind = "provider" if purpose == "provider" else "consumer"
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        new_account = db.insert_on_conflict(Account).values(
            id=uuid.uuid4().hex, name=account_name, kind=new_account_kind, created_at=now
        )
        await session.execute(new_account.on_conflict_do_nothing(index_elements=[Account.name]))
        account = (
            await session.execute(
                select(Account.id, Account.kind).where(Account.name == account_name)
            )
        ).one()
        _check_holder(purpose, account_name, account.kind)
        return add_key(session, account.id, purpose=purpose, name=name, now=now)


def add_key(
    session: AsyncSession,
    account_id: str,
    *,
    purpose: KeyPurpose,
    name: str | None,
    now: datetime,
) -> CreatedKey:
    """Add a new key of `purpose` for the account to the session's transaction (the caller
    has checked that the account may hold it) and return it, raw, once."""
    _check_name(name, "name")
    prefix = _prefix(purpose)
    raw_key = prefix + secrets.token_urlsafe(_TOKEN_BYTES)
    key_id = uuid.uuid4().hex
    display_prefix = raw_key[: len(prefix) + DISPLAY_TOKEN_CHARS] + ELLIPSIS
    session.add(
        ApiKey(
            id=key_id,
            account_id=account_id,
            key_hash=_hash(raw_key),
            display_prefix=display_prefix,
            purpose=purpose,
            name=name,
            created_at=now,
        )
    )
    return CreatedKey(
        key=raw_key,
        key_id=key_id,
        display_prefix=display_prefix,
        account_id=account_id,
        purpose=purpose,
    )


async def authenticate(db: Database, raw_key: str) -> Caller | None:
    """The caller an API key belongs to, or None if it is malformed, unknown or revoked.
    A provider token is not an API key and never authenticates here. Only reads: the
    caller marks the key used with `note_use`."""
    return await find_caller(db, raw_key, "api")


async def authenticate_provider(db: Database, raw_token: str) -> Caller | None:
    """The provider account a provider token earns for, or None if it is malformed, unknown
    or revoked. An API key is not a provider token and never authenticates here. Marks the
    token used (at most one write a minute): a provider connecting writes anyway."""
    caller = await find_caller(db, raw_token, "provider")
    if caller is not None:
        await note_use(db, caller)
    return caller


async def find_caller(db: Database, raw_key: str, purpose: KeyPurpose) -> Caller | None:
    """Who holds `raw_key` as a key of `purpose`, or None if it is malformed, unknown or
    revoked; one read-only transaction."""
    if not _is_well_formed(raw_key, purpose):
        return None
    query = select(ApiKey.id, ApiKey.account_id, ApiKey.revoked_at, ApiKey.last_used_at).where(
        ApiKey.key_hash == _hash(raw_key), ApiKey.purpose == purpose
    )
    async with db.reads() as session:
        row = (await session.execute(query)).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return Caller(account_id=row.account_id, key_id=row.id, last_used_at=row.last_used_at)


async def note_use(db: Database, caller: Caller) -> None:
    """Mark the caller's key used now, unless authentication saw it marked within the last
    minute (then nothing is written); a concurrent mark written meanwhile is kept."""
    now = datetime.now(UTC)
    if not caller.is_use_stale(now):
        return
    stale = now - LAST_USED_RESOLUTION
    async with db.sessions.begin() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == caller.key_id)
            .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= stale))
            .values(last_used_at=now)
        )


async def list_keys(db: Database) -> list[KeyInfo]:
    """Every key and provider token ever issued, revoked ones included, oldest first."""
    query = (
        select(ApiKey, Account.name, Account.kind)
        .join(Account, ApiKey.account_id == Account.id)
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    async with db.reads() as session:
        rows = (await session.execute(query)).all()
    return [
        KeyInfo(
            key_id=key.id,
            display_prefix=key.display_prefix,
            account_id=key.account_id,
            account_name=account_name,
            account_kind=account_kind,
            purpose=key.purpose,
            name=key.name,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )
        for key, account_name, account_kind in rows
    ]


async def revoke_key(db: Database, key_id_or_prefix: str) -> str | None:
    """Revoke one active key or provider token, named by its id, its display prefix (or a
    start of it), or the raw key itself, and return its SHA-256 (hex, as stored), by which
    coordinators that remember the key forget it. Returns None, revoking nothing, unless
    exactly one active key matches."""
    ident = key_id_or_prefix.strip().removesuffix(ELLIPSIS)
    if not ident:
        return None
    # substr, not LIKE: SQLite's LIKE ignores case, and keys are case-sensitive.
    matches = or_(
        ApiKey.id == ident,
        func.substr(ApiKey.display_prefix, 1, len(ident)) == ident,
        ApiKey.key_hash == _hash(ident),
    )
    async with db.sessions.begin() as session:
        found = (
            await session.execute(
                select(ApiKey.id, ApiKey.key_hash)
                .where(ApiKey.revoked_at.is_(None), matches)
                .limit(2)
            )
        ).all()
        if len(found) != 1:
            return None
        key_id, key_hash = found[0]
        await session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=datetime.now(UTC))
        )
    return str(key_hash)
