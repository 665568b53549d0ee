"""Holds and settlement: a request reserves what it could cost at most, then pays exactly
for what was delivered, in one database transaction per step.

Owns the money side of a job's life:
- `reserve` takes a hold on the consumer's available credit with one conditional UPDATE,
  so no check-then-debit race exists on SQLite or PostgreSQL;
- `settle` closes the hold, charges at most what was held, credits the provider its share
  and the platform its fee, and records the job (and its receipt) — all or nothing, and
  idempotent per job id: a second call changes nothing and returns the first result;
  `settle_all` does the same for many jobs in one transaction, moving each account's
  balance once for all of them;
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
from moonflower.ledger.book import UNTRACKED, Entry, Posting, apply_changes, post_all
from moonflower.ledger.database import Database
from moonflower.ledger.jobs import JobRecord, insert_jobs
from moonflower.ledger.receipts import ReceiptRecord, insert_receipts
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


@dataclass(frozen=True, slots=True)
class JobBill:
    """What one finished job owes, as `settle` takes it."""

    job: JobRecord
    cost_micro_usd: int
    platform_fee_bps: int
    provider_account_id: str | None
    receipt: ReceiptRecord | None = None


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
    bill = JobBill(job, cost_micro_usd, platform_fee_bps, provider_account_id, receipt)
    [settlement] = await settle_all(db, [bill])
    return settlement


async def settle_all(db: Database, bills: Sequence[JobBill]) -> list[Settlement]:
    """Settle every bill as `settle` settles one, all in one database transaction (all or
    nothing), and return their settlements in order. Each job keeps its own ledger
    transaction and entries, exact to the micro-USD; the accounts' balances move once per
    account for the whole batch, so the platform's row is updated once, not once per job.
    A job billed twice (in `bills` or before) is settled once: its later bills return the
    first one's result."""
    for bill in bills:
        if bill.cost_micro_usd < 0 or not 0 <= bill.platform_fee_bps <= BASIS_POINTS:
            raise ValueError("cost and fee must be non-negative; the fee at most 100 %")
    firsts: dict[str, JobBill] = {}
    for bill in bills:
        firsts.setdefault(bill.job.id, bill)
    if not firsts:
        return []
    async with db.sessions.begin() as session:
        closed = await _close_holds(session, sorted(firsts))
        settled = await _settled_earlier(session, [j for j in firsts if j not in closed])
        postings: list[Posting] = []
        held_changes: dict[str, int] = {}
        jobs: list[JobRecord] = []
        receipts: list[ReceiptRecord] = []
        for job_id, bill in firsts.items():
            if job_id in settled:
                continue
            hold = closed.get(job_id)
            settlement, entries = _split(bill, hold)
            settled[job_id] = settlement
            if hold is not None:
                held_changes[hold.account_id] = (
                    held_changes.get(hold.account_id, 0) - hold.amount_micro_usd
                )
            if entries:
                postings.append(Posting(entries, job_id=job_id))
            jobs.append(replace(bill.job, charged_micro_usd=settlement.charged_micro_usd))
            if bill.receipt is not None:
                receipts.append(bill.receipt)
        await post_all(session, "settlement", postings, held_changes=held_changes)
        await insert_jobs(session, jobs)
        await insert_receipts(session, receipts)
    return [settled[bill.job.id] for bill in bills]


@dataclass(frozen=True, slots=True)
class _ClosedHold:
    account_id: str
    amount_micro_usd: int


async def _close_holds(session: AsyncSession, job_ids: Sequence[str]) -> dict[str, _ClosedHold]:
    """Mark the open holds of `job_ids` settled; the ones this closed, by job id."""
    rows = await session.execute(
        update(Hold)
        .where(Hold.job_id.in_(job_ids), Hold.status == "held")
        .values(status="settled", closed_at=datetime.now(UTC))
        .returning(Hold.job_id, Hold.account_id, Hold.amount_micro_usd),
        execution_options=UNTRACKED,
    )
    return {row.job_id: _ClosedHold(row.account_id, row.amount_micro_usd) for row in rows}


def _split(bill: JobBill, hold: _ClosedHold | None) -> tuple[Settlement, list[Entry]]:
    """What `bill` charges against `hold` (none: nothing), who gets what, and the entries
    that move it."""
    reserved = hold.amount_micro_usd if hold is not None else 0
    charged = min(bill.cost_micro_usd, reserved)
    fee = charged * bill.platform_fee_bps // BASIS_POINTS
    share = charged - fee
    if bill.provider_account_id is None:  # nobody to pay: the platform keeps the share
        fee, share = charged, 0
    entries: list[Entry] = []
    if charged > 0:
        assert hold is not None
        entries.append(Entry(hold.account_id, "charge", -charged))
        if share:
            assert bill.provider_account_id is not None
            entries.append(Entry(bill.provider_account_id, "provider_share", share))
        if fee:
            entries.append(Entry(PLATFORM_ACCOUNT_ID, "platform_fee", fee))
    return Settlement(bill.job.id, reserved, charged, share, fee), entries


async def _settled_earlier(session: AsyncSession, job_ids: Sequence[str]) -> dict[str, Settlement]:
    """The settlements of those of `job_ids` that are already stored."""
    if not job_ids:
        return {}
    stored = (await session.execute(select(Job.id).where(Job.id.in_(job_ids)))).scalars()
    earlier: dict[str, Settlement] = {}
    for job_id in list(stored):
        settlement = await _settled_before(session, job_id)
        assert settlement is not None
        earlier[job_id] = settlement
    return earlier


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
