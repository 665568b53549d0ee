"""Account statements: a consumer's usage and a provider's earnings, page by page.

Owns the read side of money for people: which jobs an account paid for (tokens, cost,
receipt hash) and which jobs earned a provider account its share. Pages run newest first
and continue after a job id. Never returns prompt or completion text, which the ledger
does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import and_, func, or_, select

from moonflower.ledger.database import Database
from moonflower.ledger.tables import Job, LedgerEntry, LedgerTransaction


@dataclass(frozen=True, slots=True)
class UsageLine:
    job_id: str
    created_at: datetime
    model: str
    provider_id: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    """The counts billed (zero for a job that delivered nothing)."""
    cost_micro_usd: int
    receipt_hash: str | None


@dataclass(frozen=True, slots=True)
class EarningLine:
    job_id: str
    created_at: datetime
    model: str
    provider_id: str
    prompt_tokens: int
    completion_tokens: int
    earned_micro_usd: int


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    lines: list[T]
    has_more: bool


async def usage(
    db: Database, account_id: str, *, limit: int, after: str | None = None
) -> Page[UsageLine]:
    """The account's jobs, newest first, starting after job `after` (if it is theirs)."""
    query = select(Job).where(Job.account_id == account_id)
    async with db.reads() as session:
        if after is not None:
            mark = await session.get(Job, after)
            if mark is not None and mark.account_id == account_id:
                query = query.where(
                    or_(
                        Job.created_at < mark.created_at,
                        and_(Job.created_at == mark.created_at, Job.id < mark.id),
                    )
                )
        rows = (
            (
                await session.execute(
                    query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
                )
            )
            .scalars()
            .all()
        )
    lines = [
        UsageLine(
            job_id=job.id,
            created_at=job.created_at,
            model=job.model,
            provider_id=job.provider_id,
            status=job.status,
            prompt_tokens=job.billed_prompt_tokens,
            completion_tokens=job.billed_completion_tokens,
            cost_micro_usd=job.charged_micro_usd,
            receipt_hash=job.receipt_hash,
        )
        for job in rows[:limit]
    ]
    return Page(lines, has_more=len(rows) > limit)


async def earnings(
    db: Database, account_id: str, *, limit: int, after: str | None = None
) -> Page[EarningLine]:
    """The jobs that earned the account its share, newest first, after job `after`."""
    query = (
        select(LedgerEntry.id, LedgerEntry.amount_micro_usd, Job)
        .join(LedgerTransaction, LedgerEntry.transaction_id == LedgerTransaction.id)
        .join(Job, Job.id == LedgerTransaction.job_id)
        .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "provider_share")
    )
    async with db.reads() as session:
        if after is not None:
            mark = await session.scalar(
                select(LedgerEntry.id)
                .join(LedgerTransaction, LedgerEntry.transaction_id == LedgerTransaction.id)
                .where(
                    LedgerTransaction.job_id == after,
                    LedgerEntry.account_id == account_id,
                    LedgerEntry.kind == "provider_share",
                )
            )
            if mark is not None:
                query = query.where(LedgerEntry.id < mark)
        rows = (await session.execute(query.order_by(LedgerEntry.id.desc()).limit(limit + 1))).all()
    lines = [
        EarningLine(
            job_id=job.id,
            created_at=job.created_at,
            model=job.model,
            provider_id=job.provider_id,
            prompt_tokens=job.billed_prompt_tokens,
            completion_tokens=job.billed_completion_tokens,
            earned_micro_usd=amount,
        )
        for _entry_id, amount, job in rows[:limit]
    ]
    return Page(lines, has_more=len(rows) > limit)


async def total_earned(db: Database, account_id: str) -> int:
    query = select(func.coalesce(func.sum(LedgerEntry.amount_micro_usd), 0)).where(
        LedgerEntry.account_id == account_id, LedgerEntry.kind == "provider_share"
    )
    async with db.reads() as session:
        return int(await session.scalar(query) or 0)
