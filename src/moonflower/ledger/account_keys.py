"""An account's own API keys, as its owner manages them from the console: create, list,
rename and revoke.

Every query here is scoped to one account: a key id of another account is the same as an
unknown one (nothing found, nothing changed), so an owner can neither see nor touch keys
that are not theirs. The key formats and authentication are `keys`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update

from moonflower.ledger.database import Database
from moonflower.ledger.keys import CreatedKey, KeyPurpose, add_key, check_key_name
from moonflower.ledger.tables import ApiKey

MAX_KEYS_PER_ACCOUNT = 200
"""Active keys one account may hold at once: plenty for people, a bound for scripts."""


@dataclass(frozen=True, slots=True)
class OwnKey:
    key_id: str
    name: str | None
    display_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def create(
    db: Database, account_id: str, name: str | None, *, purpose: KeyPurpose = "api"
) -> CreatedKey | None:
    """A new key for the account, raw once; None when it already holds the most keys."""
    check_key_name(name)
    async with db.sessions.begin() as session:
        active = await session.scalar(
            select(ApiKey.id)
            .where(ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
            .offset(MAX_KEYS_PER_ACCOUNT - 1)
            .limit(1)
        )
        if active is not None:
            return None
        return add_key(session, account_id, purpose=purpose, name=name, now=datetime.now(UTC))


async def listed(db: Database, account_id: str, *, purpose: KeyPurpose = "api") -> list[OwnKey]:
    """The account's keys of `purpose`, revoked ones included, newest first."""
    query = (
        select(ApiKey)
        .where(ApiKey.account_id == account_id, ApiKey.purpose == purpose)
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
    )
    async with db.reads() as session:
        rows = (await session.scalars(query)).all()
    return [
        OwnKey(
            key_id=row.id,
            name=row.name,
            display_prefix=row.display_prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )
        for row in rows
    ]


async def rename(db: Database, account_id: str, key_id: str, name: str | None) -> bool:
    """Name one of the account's keys; False if the account has no such key."""
    check_key_name(name)
    async with db.sessions.begin() as session:
        done = await session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.account_id == account_id)
            .values(name=name)
        )
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def revoke(db: Database, account_id: str, key_id: str) -> str | None:
    """Revoke one of the account's active keys and return its SHA-256 (for the replicas'
    caches to forget it); None if the account has no such active key."""
    async with db.sessions.begin() as session:
        key_hash = await session.scalar(
            select(ApiKey.key_hash).where(
                ApiKey.id == key_id, ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None)
            )
        )
        if key_hash is None:
            return None
        await session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=datetime.now(UTC))
        )
    return str(key_hash)
