"""Provider reputation that outlives connections: identities, verdicts, and clearing them.

Owns two tables. `provider_identities` holds one row per signing key a provider proved it
holds (by answering a challenge with it): the account that answers for it, when it was seen,
the jobs and failures counted on its connections, and the verdict against the key. Each row
of `provider_account_verdicts` holds a failed check against the account that answers for
the failing machine; an account with a verdict not yet cleared admits none of its machines,
whatever key they present. Only `clear_key` and `clear_account` (an operator's commands)
lift verdicts; nothing a provider does or says does.

Lookups only read (`Database.reads`: on SQLite they take no write lock, so a registration
never waits behind a writer). Decides nothing about who is checked or why: the coordinator
(`coordinator/reputation.py`) says whose verdict to record and asks `standing` before
admitting a provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Select, func, select, update

from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account, ProviderAccountVerdict, ProviderIdentity

MAX_REASON_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a provider may not be admitted: its key's verdict, or its account's."""

    subject: Literal["key", "account"]
    reason: str
    untrusted_at: datetime


@dataclass(frozen=True, slots=True)
class IdentityInfo:
    fingerprint: str
    account_id: str
    account_name: str
    first_seen_at: datetime
    last_seen_at: datetime
    jobs: int
    failures: int
    untrusted_reason: str | None
    untrusted_at: datetime | None


@dataclass(frozen=True, slots=True)
class AccountVerdictInfo:
    id: int
    account_id: str
    account_name: str
    fingerprint: str | None
    reason: str
    untrusted_at: datetime
    cleared_at: datetime | None


@dataclass(frozen=True, slots=True)
class Cleared:
    """What an operator's clearing lifted."""

    keys: tuple[str, ...]
    """Fingerprints whose verdict was lifted."""
    account_verdicts: int
    """Account verdicts lifted."""

    @property
    def is_empty(self) -> bool:
        return not self.keys and not self.account_verdicts


def _reason(text: str) -> str:
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


async def standing(
    db: Database, *, fingerprint: str | None, account_id: str | None
) -> Verdict | None:
    """The verdict that keeps a provider with this key (if it has one) and this account (if
    it answers to one) out of routing, or None. A key's verdict is named before its
    account's."""
    async with db.reads() as session:
        if fingerprint is not None:
            key = (
                await session.execute(
                    select(ProviderIdentity.untrusted_reason, ProviderIdentity.untrusted_at).where(
                        ProviderIdentity.fingerprint == fingerprint,
                        ProviderIdentity.untrusted_reason.is_not(None),
                    )
                )
            ).one_or_none()
            if key is not None and key.untrusted_reason is not None:
                assert key.untrusted_at is not None
                return Verdict("key", key.untrusted_reason, key.untrusted_at)
        if account_id is not None:
            held = (
                await session.execute(
                    select(ProviderAccountVerdict.reason, ProviderAccountVerdict.untrusted_at)
                    .where(
                        ProviderAccountVerdict.account_id == account_id,
                        ProviderAccountVerdict.cleared_at.is_(None),
                    )
                    .order_by(ProviderAccountVerdict.id)
                    .limit(1)
                )
            ).one_or_none()
            if held is not None:
                return Verdict("account", held.reason, held.untrusted_at)
    return None


async def note_seen(db: Database, fingerprint: str, account_id: str) -> None:
    """A connection proved it holds this key, enrolled under `account_id`: the identity is
    created, or seen again (and answered for by that account from now on). An untrusted
    identity is left exactly as it is."""
    now = datetime.now(UTC)
    insert = db.insert_on_conflict(ProviderIdentity).values(
        fingerprint=fingerprint,
        account_id=account_id,
        first_seen_at=now,
        last_seen_at=now,
        jobs=0,
        failures=0,
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[ProviderIdentity.fingerprint],
        set_={"account_id": insert.excluded.account_id, "last_seen_at": now},
        where=ProviderIdentity.untrusted_reason.is_(None),
    )
    async with db.sessions.begin() as session:
        await session.execute(upsert)


async def add_service(
    db: Database, fingerprint: str, account_id: str, *, jobs: int, failures: int
) -> None:
    """Add a connection's counted jobs and failures to the identity's record and mark it seen
    now; an identity not yet recorded is created for `account_id`. Commutes with `note_seen`
    and `untrust`, so the coordinator may write them in any order."""
    if jobs < 0 or failures < 0 or failures > jobs:
        raise ValueError(f"cannot add {jobs} jobs with {failures} failures")
    now = datetime.now(UTC)
    insert = db.insert_on_conflict(ProviderIdentity).values(
        fingerprint=fingerprint,
        account_id=account_id,
        first_seen_at=now,
        last_seen_at=now,
        jobs=jobs,
        failures=failures,
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[ProviderIdentity.fingerprint],
        set_={
            "jobs": ProviderIdentity.jobs + insert.excluded.jobs,
            "failures": ProviderIdentity.failures + insert.excluded.failures,
            "last_seen_at": now,
        },
    )
    async with db.sessions.begin() as session:
        await session.execute(upsert)


async def untrust(
    db: Database,
    reason: str,
    *,
    account_id: str,
    fingerprint: str | None,
    is_account_answerable: bool,
) -> None:
    """Record a failed check by a provider enrolled under `account_id`: against its key, if it
    had proven one (the first verdict against a key is the one kept), and against the account
    when the account answers for its machines (every enrolled account; not the shared one of
    anonymous providers). One transaction."""
    reason = _reason(reason)
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        if fingerprint is not None:
            insert = db.insert_on_conflict(ProviderIdentity).values(
                fingerprint=fingerprint,
                account_id=account_id,
                first_seen_at=now,
                last_seen_at=now,
                jobs=0,
                failures=0,
                untrusted_reason=reason,
                untrusted_at=now,
            )
            await session.execute(
                insert.on_conflict_do_update(
                    index_elements=[ProviderIdentity.fingerprint],
                    set_={
                        "account_id": insert.excluded.account_id,
                        "last_seen_at": now,
                        "untrusted_reason": func.coalesce(
                            ProviderIdentity.untrusted_reason, insert.excluded.untrusted_reason
                        ),
                        "untrusted_at": func.coalesce(
                            ProviderIdentity.untrusted_at, insert.excluded.untrusted_at
                        ),
                    },
                )
            )
        if is_account_answerable:
            session.add(
                ProviderAccountVerdict(
                    account_id=account_id, fingerprint=fingerprint, reason=reason, untrusted_at=now
                )
            )


def _identities() -> Select[ProviderIdentity, str]:
    return select(ProviderIdentity, Account.name).join(
        Account, ProviderIdentity.account_id == Account.id
    )


def _identity_info(row: ProviderIdentity, account_name: str) -> IdentityInfo:
    return IdentityInfo(
        fingerprint=row.fingerprint,
        account_id=row.account_id,
        account_name=account_name,
        first_seen_at=row.first_seen_at,
        last_seen_at=row.last_seen_at,
        jobs=row.jobs,
        failures=row.failures,
        untrusted_reason=row.untrusted_reason,
        untrusted_at=row.untrusted_at,
    )


async def list_identities(db: Database) -> list[IdentityInfo]:
    """Every provider identity, most recently seen first."""
    query = _identities().order_by(
        ProviderIdentity.last_seen_at.desc(), ProviderIdentity.fingerprint
    )
    async with db.reads() as session:
        rows = (await session.execute(query)).all()
    return [_identity_info(row, name) for row, name in rows]


async def list_account_verdicts(
    db: Database, *, include_cleared: bool = False
) -> list[AccountVerdictInfo]:
    """Account verdicts, oldest first: those in force, or all of them."""
    query = select(ProviderAccountVerdict, Account.name).join(
        Account, ProviderAccountVerdict.account_id == Account.id
    )
    if not include_cleared:
        query = query.where(ProviderAccountVerdict.cleared_at.is_(None))
    async with db.reads() as session:
        rows = (await session.execute(query.order_by(ProviderAccountVerdict.id))).all()
    return [
        AccountVerdictInfo(
            id=row.id,
            account_id=row.account_id,
            account_name=name,
            fingerprint=row.fingerprint,
            reason=row.reason,
            untrusted_at=row.untrusted_at,
            cleared_at=row.cleared_at,
        )
        for row, name in rows
    ]


async def find_identity(db: Database, fingerprint_or_prefix: str) -> IdentityInfo | None:
    """The one identity whose fingerprint is, or starts with, the given hex (any case); None
    when none or several match."""
    wanted = fingerprint_or_prefix.strip().lower()
    if not wanted:
        return None
    # substr, not LIKE: no wildcard in the input can widen the match.
    query = (
        _identities()
        .where(func.substr(ProviderIdentity.fingerprint, 1, len(wanted)) == wanted)
        .limit(2)
    )
    async with db.reads() as session:
        rows = (await session.execute(query)).all()
    if len(rows) != 1:
        return None
    row, name = rows[0]
    return _identity_info(row, name)


async def clear_key(db: Database, fingerprint: str) -> Cleared:
    """Lift the verdict against this key, and the account verdicts its failures caused."""
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        keys = (
            await session.execute(
                update(ProviderIdentity)
                .where(
                    ProviderIdentity.fingerprint == fingerprint,
                    ProviderIdentity.untrusted_reason.is_not(None),
                )
                .values(untrusted_reason=None, untrusted_at=None)
                .returning(ProviderIdentity.fingerprint)
            )
        ).scalars()
        cleared_keys = tuple(keys)
        accounts = await session.execute(
            update(ProviderAccountVerdict)
            .where(
                ProviderAccountVerdict.fingerprint == fingerprint,
                ProviderAccountVerdict.cleared_at.is_(None),
            )
            .values(cleared_at=now)
            .returning(ProviderAccountVerdict.id)
        )
        return Cleared(keys=cleared_keys, account_verdicts=len(accounts.all()))


async def clear_account(db: Database, account_id: str) -> Cleared:
    """Lift every verdict held against this account and against the keys it answers for."""
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        keys = (
            await session.execute(
                update(ProviderIdentity)
                .where(
                    ProviderIdentity.account_id == account_id,
                    ProviderIdentity.untrusted_reason.is_not(None),
                )
                .values(untrusted_reason=None, untrusted_at=None)
                .returning(ProviderIdentity.fingerprint)
            )
        ).scalars()
        cleared_keys = tuple(sorted(keys))
        accounts = await session.execute(
            update(ProviderAccountVerdict)
            .where(
                ProviderAccountVerdict.account_id == account_id,
                ProviderAccountVerdict.cleared_at.is_(None),
            )
            .values(cleared_at=now)
            .returning(ProviderAccountVerdict.id)
        )
        return Cleared(keys=cleared_keys, account_verdicts=len(accounts.all()))
