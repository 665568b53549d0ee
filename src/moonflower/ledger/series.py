"""Money and traffic over time, for charts: an account's spending and earnings per UTC day,
and the network's tokens per minute.

Buckets are filled in Python from the rows of the window (dates are spelled differently by
SQLite and PostgreSQL, and the windows are short), and every bucket in the window is
returned, empty ones as zero, so a chart has no gaps. Counts and money only, never content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select

from moonflower.ledger.database import Database
from moonflower.ledger.tables import Job, LedgerEntry, LedgerTransaction

MAX_DAYS = 366


@dataclass(frozen=True, slots=True)
class DayTotal:
    day: date
    micro_usd: int
    jobs: int


@dataclass(frozen=True, slots=True)
class MinuteTokens:
    minute: datetime
    tokens: int
    requests: int


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int
    prompt_tokens: int
    completion_tokens: int


def _days(days: int, now: datetime) -> list[date]:
    today = now.date()
    return [today - timedelta(days=back) for back in range(days - 1, -1, -1)]


def _window_start(days: int, now: datetime) -> datetime:
    first = now.date() - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


async def daily_spending(db: Database, account_id: str, days: int) -> list[DayTotal]:
    """What the account was charged each day, oldest first, today last."""
    now = datetime.now(UTC)
    query = select(Job.created_at, Job.charged_micro_usd).where(
        Job.account_id == account_id, Job.created_at >= _window_start(days, now)
    )
    async with db.reads() as session:
        rows = (await session.execute(query)).all()
    return _by_day(((at, amount) for at, amount in rows), days, now)


async def daily_earnings(db: Database, account_id: str, days: int) -> list[DayTotal]:
    """What the (provider) account earned each day, oldest first, today last."""
    now = datetime.now(UTC)
    query = (
        select(LedgerTransaction.created_at, LedgerEntry.amount_micro_usd)
        .join(LedgerTransaction, LedgerEntry.transaction_id == LedgerTransaction.id)
        .where(
            LedgerEntry.account_id == account_id,
            LedgerEntry.kind == "provider_share",
            LedgerTransaction.created_at >= _window_start(days, now),
        )
    )
    async with db.reads() as session:
        rows = (await session.execute(query)).all()
    return _by_day(((at, amount) for at, amount in rows), days, now)


def _by_day(rows: object, days: int, now: datetime) -> list[DayTotal]:
    money: dict[date, int] = {}
    jobs: dict[date, int] = {}
    for at, amount in rows:  # type: ignore[attr-defined]
        day = at.astimezone(UTC).date()
        money[day] = money.get(day, 0) + int(amount)
        jobs[day] = jobs.get(day, 0) + 1
    return [DayTotal(day, money.get(day, 0), jobs.get(day, 0)) for day in _days(days, now)]


async def tokens_per_minute(db: Database, minutes: int) -> list[MinuteTokens]:
    """Tokens (prompt and output) of jobs that ended in each of the last `minutes` minutes,
    oldest first, the current minute last."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=minutes - 1)
    query = select(Job.created_at, Job.duration_ms, Job.prompt_tokens, Job.completion_tokens).where(
        Job.created_at >= start - timedelta(hours=1)
    )
    async with db.reads() as session:
        rows = (await session.execute(query)).all()
    tokens: dict[datetime, int] = {}
    requests: dict[datetime, int] = {}
    for created_at, duration_ms, prompt, completion in rows:
        ended = (created_at + timedelta(milliseconds=duration_ms)).replace(second=0, microsecond=0)
        if ended < start:
            continue
        tokens[ended] = tokens.get(ended, 0) + prompt + completion
        requests[ended] = requests.get(ended, 0) + 1
    slots = [start + timedelta(minutes=n) for n in range(minutes)]
    return [MinuteTokens(at, tokens.get(at, 0), requests.get(at, 0)) for at in slots]


async def totals(db: Database) -> Totals:
    """Every job the network has recorded."""
    query = select(
        func.count(),
        func.coalesce(func.sum(Job.prompt_tokens), 0),
        func.coalesce(func.sum(Job.completion_tokens), 0),
    )
    async with db.reads() as session:
        count, prompt, completion = (await session.execute(query)).one()
    return Totals(int(count), int(prompt), int(completion))
