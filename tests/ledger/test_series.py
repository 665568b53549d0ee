"""Spending and earnings per day: every day of the window, empty ones as zero, each job's
charge on the UTC day it was made, nothing from before the window or another account."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from moonflower.ledger import keys, series
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Job


async def _job(db: Database, key: keys.CreatedKey, job_id: str, at: datetime, charged: int) -> None:
    async with db.sessions.begin() as session:
        session.add(
            Job(
                id=job_id,
                account_id=key.account_id,
                key_id=key.key_id,
                model="m",
                provider_id="p",
                status="completed",
                prompt_tokens=3,
                completion_tokens=4,
                created_at=at,
                duration_ms=10,
                charged_micro_usd=charged,
            )
        )


async def test_daily_spending_buckets_by_utc_day(ledger_db: Database) -> None:
    mine = await keys.create_key(ledger_db, account_name="mine")
    theirs = await keys.create_key(ledger_db, account_name="theirs")
    now = datetime.now(UTC)
    await _job(ledger_db, mine, "today-1", now, 100)
    await _job(ledger_db, mine, "today-2", now, 250)
    await _job(ledger_db, mine, "two-days-ago", now - timedelta(days=2), 7)
    await _job(ledger_db, mine, "long-ago", now - timedelta(days=40), 1_000)
    await _job(ledger_db, theirs, "not-mine", now, 5_000)
    days = await series.daily_spending(ledger_db, mine.account_id, 7)
    assert [day.day for day in days] == [
        (now - timedelta(days=back)).date() for back in range(6, -1, -1)
    ]
    assert [day.micro_usd for day in days] == [0, 0, 0, 0, 7, 0, 350]
    assert [day.jobs for day in days] == [0, 0, 0, 0, 1, 0, 2]


async def test_totals_and_tokens_per_minute(ledger_db: Database) -> None:
    key = await keys.create_key(ledger_db, account_name="someone")
    now = datetime.now(UTC)
    await _job(ledger_db, key, "recent", now - timedelta(seconds=5), 1)
    await _job(ledger_db, key, "old", now - timedelta(hours=3), 1)
    totals = await series.totals(ledger_db)
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (2, 6, 8)
    minutes = await series.tokens_per_minute(ledger_db, 30)
    assert len(minutes) == 30
    assert sum(minute.tokens for minute in minutes) == 7
    assert sum(minute.requests for minute in minutes) == 1
