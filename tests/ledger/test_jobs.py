"""Job records round-trip without any text, and the served-models register upserts."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, StatementError

from moonflower.ledger.database import Database
from moonflower.ledger.jobs import (
    JobRecord,
    has_been_served,
    list_jobs,
    note_models_served,
    record_job,
)
from moonflower.ledger.keys import CreatedKey, create_key
from moonflower.ledger.tables import Job, ServedModel

JOB_COLUMNS = {
    "billed_prompt_tokens",
    "billed_completion_tokens",
    "charged_micro_usd",
    "receipt_hash",
    "id",
    "account_id",
    "key_id",
    "model",
    "provider_id",
    "status",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "created_at",
    "first_token_ms",
    "duration_ms",
    "error_code",
}
START = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _job(key: CreatedKey, *, seconds: int = 0, **changes: object) -> JobRecord:
    record = JobRecord(
        id=f"job-{uuid.uuid4().hex}",
        account_id=key.account_id,
        key_id=key.key_id,
        model="smollm2-135m",
        provider_id="provider-1",
        status="completed",
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=34,
        created_at=START + timedelta(seconds=seconds),
        first_token_ms=56,
        duration_ms=789,
        error_code=None,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_jobs_have_no_place_for_prompt_or_completion_text() -> None:
    assert set(Job.__table__.columns.keys()) == JOB_COLUMNS
    assert {field.name for field in dataclasses.fields(JobRecord)} == JOB_COLUMNS


async def test_recorded_jobs_come_back_newest_first(ledger_db: Database) -> None:
    key = await create_key(ledger_db)
    oldest = _job(key, seconds=0)
    failed = _job(
        key,
        seconds=1,
        status="failed",
        finish_reason=None,
        first_token_ms=None,
        error_code="provider_error",
        created_at=(START + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=2))),
    )
    newest = _job(key, seconds=2, status="cancelled", finish_reason="cancelled")
    for record in (failed, newest, oldest):
        await record_job(ledger_db, record)

    listed = await list_jobs(ledger_db)
    assert listed == [newest, failed, oldest]
    assert all(job.created_at.tzinfo is UTC for job in listed)
    assert await list_jobs(ledger_db, limit=2) == [newest, failed]


async def test_list_jobs_can_keep_to_one_account(ledger_db: Database) -> None:
    mine = await create_key(ledger_db, account_name="mine")
    theirs = await create_key(ledger_db, account_name="theirs")
    my_job = _job(mine)
    await record_job(ledger_db, my_job)
    await record_job(ledger_db, _job(theirs, seconds=1))

    assert await list_jobs(ledger_db, account_id=mine.account_id) == [my_job]
    with pytest.raises(ValueError, match="limit"):
        await list_jobs(ledger_db, limit=0)


async def test_job_outside_the_rules_is_refused(ledger_db: Database) -> None:
    key = await create_key(ledger_db)
    with pytest.raises(IntegrityError):
        await record_job(ledger_db, _job(key, status="done"))
    with pytest.raises(IntegrityError):
        await record_job(ledger_db, _job(key, key_id="no-such-key"))
    with pytest.raises(StatementError, match="naive"):
        await record_job(ledger_db, _job(key, created_at=datetime(2025, 1, 1)))
    assert await list_jobs(ledger_db) == []


async def _served(db: Database) -> dict[str, tuple[datetime, datetime]]:
    async with db.sessions() as session:
        rows = (await session.execute(select(ServedModel))).scalars().all()
    return {row.model_id: (row.first_seen_at, row.last_seen_at) for row in rows}


async def test_models_served_are_remembered(ledger_db: Database) -> None:
    assert await has_been_served(ledger_db, "smollm2") is False
    await note_models_served(ledger_db, [])
    await note_models_served(ledger_db, ["smollm2", "gemma3", "smollm2"])

    assert await has_been_served(ledger_db, "smollm2") is True
    assert await has_been_served(ledger_db, "gemma3") is True
    assert await has_been_served(ledger_db, "llama") is False
    assert set(await _served(ledger_db)) == {"smollm2", "gemma3"}


async def test_serving_again_refreshes_last_seen_only(ledger_db: Database) -> None:
    await note_models_served(ledger_db, ["smollm2"])
    long_ago = datetime.now(UTC) - timedelta(days=3)
    async with ledger_db.sessions.begin() as session:
        await session.execute(
            update(ServedModel).values(first_seen_at=long_ago, last_seen_at=long_ago)
        )

    before = datetime.now(UTC)
    await note_models_served(ledger_db, iter(["smollm2", "gemma3"]))
    served = await _served(ledger_db)
    assert served["smollm2"][0] == long_ago
    assert served["smollm2"][1] >= before
    assert served["gemma3"][0] == served["gemma3"][1] >= before


async def test_concurrent_registrations_do_not_conflict(ledger_db: Database) -> None:
    batches = [["a", "b", "c"], ["c", "b", "a"], ["b", "d"], ["d", "a"]]
    await asyncio.gather(*(note_models_served(ledger_db, batch) for batch in batches))
    assert set(await _served(ledger_db)) == {"a", "b", "c", "d"}
