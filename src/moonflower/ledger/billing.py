"""Holds and settlement: a request reserves what it could cost at most, then pays exactly
for what was delivered, in one database transaction per step.

Owns the money side of a job's life:
- `reserve` takes a hold on the consumer's available credit with one conditional UPDATE,
  so no check-then-debit race exists on SQLite or PostgreSQL;
- `settle` closes the hold, charges at most what was held, credits the provider its share
  and the platform its fee, and records the job (and its receipt) — all or nothing, and
  idempotent per job id: a second call changes nothing and returns the first result;
- every hold carries a lease: the coordinator running the job renews it (`renew_leases`)
  while the job lives, and `release_expired` frees only holds whose lease has run out —
  holds a coordinator that stopped mid-request can no longer renew. Age alone never
  releases a hold.
Prices and counts come from the caller; nothing here decides what a token costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from moonflower.errors import InsufficientFunds
from moonflower.ledger.accounts import PLATFORM_ACCOUNT_ID
from moonflower.ledger.book import UNTRACKED, Entry, apply_changes, post
from moonflower.ledger.database import Database
from moonflower.ledger.jobs import JobRecord, insert_job
from moonflower.ledger.receipts import ReceiptRecord, insert_receipt
from moonflower.ledger.tables import Account, Hold, Job, LedgerEntry, LedgerTransaction

BASIS_POINTS = 10_000
LEASE_S = 120.0
"""How long a hold's lease lasts unless renewed."""


@dataclass(frozen=True, slots=True)
class Settlement:
    job_id: str
    reserved_micro_usd: int
    charged_micro_usd: int
    provider_share_micro_usd: int
    platform_fee_micro_usd: int


async def reserve(
    db: Database,
    job_id: str,
    account_id: str,
    amount_micro_usd: int,
    *,
    lease_s: float = LEASE_S,
) -> int:
    """Hold `amount_micro_usd` of the account's available credit for `job_id`, leased for
    `lease_s` seconds, and return what is still available after it, or raise
    `InsufficientFunds` (saying how much is available) and hold nothing."""
    if amount_micro_usd < 0:
        raise ValueError("a hold cannot be negative")
    async with db.sessions.begin() as session:
        left = (
            await session.execute(
                update(Account)
                .where(
                    Account.id == account_id,
                    Account.kind.in_(("consumer", "provider")),
                    Account.balance_micro_usd - Account.held_micro_usd >= amount_micro_usd,
                )
                .values(held_micro_usd=Account.held_micro_usd + amount_micro_usd)
                .returning(Account.balance_micro_usd - Account.held_micro_usd),
                execution_options=UNTRACKED,
            )
        ).scalar_one_or_none()
        if left is None:
            available = await session.scalar(
                select(Account.balance_micro_usd - Account.held_micro_usd).where(
                    Account.id == account_id
                )
            )
            raise InsufficientFunds(
                needed_micro_usd=amount_micro_usd, available_micro_usd=max(available or 0, 0)
            )
        now = datetime.now(UTC)
        await session.execute(
            insert(Hold).values(
                job_id=job_id,
                account_id=account_id,
                amount_micro_usd=amount_micro_usd,
                status="held",
                created_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s),
            )
        )
    return int(left)


async def renew_leases(db: Database, job_ids: Sequence[str], *, lease_s: float) -> int:
    """Extend the leases of the open holds of `job_ids` to `lease_s` seconds from now (one
    statement per thousand jobs). Returns how many holds were renewed."""
    renewed = 0
    until = datetime.now(UTC) + timedelta(seconds=lease_s)
    ids = list(job_ids)
    for start in range(0, len(ids), 1000):
        async with db.sessions.begin() as session:
            result = await session.execute(
                update(Hold)
                .where(Hold.job_id.in_(ids[start : start + 1000]), Hold.status == "held")
                .values(lease_expires_at=until)
            )
            renewed += int(getattr(result, "rowcount", 0) or 0)
    return renewed


async def settle(
    db: Database,
    job: JobRecord,
    *,
    cost_micro_usd: int,
    platform_fee_bps: int,
    provider_account_id: str | None,
    receipt: ReceiptRecord | None = None,
) -> Settlement:
    """Close `job`'s hold: charge `cost_micro_usd` (never more than was held), release the
    rest, pay the provider and the platform, and store the job record and its receipt.

    With no open hold (none was taken, or it was already settled or released) nothing is
    charged; the job is stored once. A repeated call returns the first call's result."""
    if cost_micro_usd < 0 or not 0 <= platform_fee_bps <= BASIS_POINTS:
        raise ValueError("cost and fee must be non-negative; the fee at most 100 %")
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        closed = (
            await session.execute(
                update(Hold)
                .where(Hold.job_id == job.id, Hold.status == "held")
                .values(status="settled", closed_at=now)
                .returning(Hold.account_id, Hold.amount_micro_usd),
                execution_options=UNTRACKED,
            )
        ).one_or_none()
        if closed is None:
            earlier = await _settled_before(session, job.id)
            if earlier is not None:
                return earlier
            reserved = charged = 0
        else:
            reserved = closed.amount_micro_usd
            charged = min(cost_micro_usd, reserved)
        fee = charged * platform_fee_bps // BASIS_POINTS
        share = charged - fee
        if provider_account_id is None:  # nobody to pay: the platform keeps the share
            fee, share = charged, 0
        held_changes = {closed.account_id: -reserved} if closed is not None else {}
        if charged > 0:
            assert closed is not None
            entries = [Entry(closed.account_id, "charge", -charged)]
            if share:
                assert provider_account_id is not None
                entries.append(Entry(provider_account_id, "provider_share", share))
            if fee:
                entries.append(Entry(PLATFORM_ACCOUNT_ID, "platform_fee", fee))
            await post(session, "settlement", entries, job_id=job.id, held_changes=held_changes)
        else:
            await apply_changes(session, {}, held_changes)
        await session.execute(insert_job(replace(job, charged_micro_usd=charged)))
        if receipt is not None:
            await session.execute(insert_receipt(receipt))
    return Settlement(job.id, reserved, charged, share, fee)


async def _settled_before(session: AsyncSession, job_id: str) -> Settlement | None:
    job = await session.get(Job, job_id)
    if job is None:
        return None
    hold = await session.get(Hold, job_id)
    charged = job.charged_micro_usd
    fee = 0
    if charged:
        fee = (
            await session.scalar(
                select(LedgerEntry.amount_micro_usd)
                .join(LedgerTransaction, LedgerEntry.transaction_id == LedgerTransaction.id)
                .where(LedgerTransaction.job_id == job_id, LedgerEntry.kind == "platform_fee")
            )
        ) or 0
    # A hold `release` closed before this job was settled was not this settlement's to close.
    reserved = hold.amount_micro_usd if hold is not None and hold.status == "settled" else 0
    return Settlement(job_id, reserved, charged, charged - fee, fee)


async def release(db: Database, job_id: str) -> bool:
    """Give a hold back whole (the job never ran). False if it was not open."""
    return bool(await _release(db, [job_id]))


async def release_expired(db: Database, *, now: datetime | None = None) -> int:
    """Release every hold whose lease ran out before `now`: nobody vouches for its job any
    more (its coordinator stopped mid-request). Returns how many were released."""
    now = now or datetime.now(UTC)
    async with db.sessions() as session:
        expired = (
            await session.execute(
                select(Hold.job_id).where(Hold.status == "held", Hold.lease_expires_at < now)
            )
        ).scalars()
        job_ids = list(expired)
    return await _release(db, job_ids, expired_before=now)


async def _release(
    db: Database, job_ids: Sequence[str], *, expired_before: datetime | None = None
) -> int:
    released = 0
    for job_id in job_ids:
        conditions = [Hold.job_id == job_id, Hold.status == "held"]
        if expired_before is not None:  # renewed meanwhile: its job lives after all
            conditions.append(Hold.lease_expires_at < expired_before)
        async with db.sessions.begin() as session:
            hold = (
                await session.execute(
                    update(Hold)
                    .where(*conditions)
                    .values(status="released", closed_at=datetime.now(UTC))
                    .returning(Hold.account_id, Hold.amount_micro_usd)
                )
            ).one_or_none()
            if hold is not None:
                await apply_changes(session, {}, {hold.account_id: -hold.amount_micro_usd})
                released += 1
    return released
