"""Finished jobs and the models the network has ever served.

Owns writing and reading job records (who asked, who served, token counts, timings, outcome)
and the served-models register that lets callers tell "no such model" from "nobody serving
it right now". Must never receive or store prompt or completion text: a `JobRecord` has no
field that could hold it. Money is not handled here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Insert, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from moonflower.ledger.database import Database
from moonflower.ledger.tables import Job, ServedModel


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    account_id: str
    key_id: str
    model: str
    provider_id: str
    status: str
    """"completed" | "cancelled" | "failed" (the database refuses anything else)."""
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    created_at: datetime
    first_token_ms: int | None
    duration_ms: int
    error_code: str | None
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    """The counts the consumer paid for (see `moonflower.ledger.billing`)."""
    charged_micro_usd: int = 0
    receipt_hash: str | None = None
    """Hex SHA-256 of the provider's verified receipt, when there is one."""


async def record_job(db: Database, record: JobRecord) -> None:
    """Store one finished job; `created_at` must be timezone-aware."""
    async with db.sessions.begin() as session:
        await session.execute(insert_job(record))


def insert_job(record: JobRecord) -> Insert:
    """The statement that stores `record` (a plain INSERT: no ORM object to track)."""
    return insert(Job).values(**dataclasses.asdict(record))


async def insert_jobs(session: AsyncSession, records: Sequence[JobRecord]) -> None:
    """Store `records` inside the caller's transaction, with one multi-row INSERT."""
    if records:  # the table, not the class: no ORM bookkeeping for rows nobody loads
        fields = [f.name for f in dataclasses.fields(JobRecord)]
        rows = [{name: getattr(record, name) for name in fields} for record in records]
        await session.execute(insert(cast(Table, Job.__table__)), rows)


def _record(job: Job) -> JobRecord:
    return JobRecord(**{f.name: getattr(job, f.name) for f in dataclasses.fields(JobRecord)})


async def list_jobs(
    db: Database, *, limit: int = 100, account_id: str | None = None
) -> list[JobRecord]:
    """The newest `limit` jobs, newest first; only `account_id`'s if given."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if account_id is not None:
        query = query.where(Job.account_id == account_id)
    async with db.reads() as session:
        jobs = (await session.execute(query)).scalars().all()
    return [_record(job) for job in jobs]


async def note_models_served(db: Database, model_ids: Iterable[str]) -> None:
    """Record that these models are being served now: first sighting or a fresh last_seen_at."""
    # Sorted and unique: PostgreSQL refuses to update one row twice in a statement, and a
    # fixed order keeps two concurrent registrations from deadlocking each other.
    unique_ids = sorted(set(model_ids))
    if not unique_ids:
        return
    now = datetime.now(UTC)
    insert = db.insert_on_conflict(ServedModel).values(
        [{"model_id": m, "first_seen_at": now, "last_seen_at": now} for m in unique_ids]
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[ServedModel.model_id],
        set_={"last_seen_at": insert.excluded.last_seen_at},
    )
    async with db.sessions.begin() as session:
        await session.execute(upsert)


async def has_been_served(db: Database, model_id: str) -> bool:
    """Whether any provider has ever registered `model_id`."""
    query = select(ServedModel.model_id).where(ServedModel.model_id == model_id)
    async with db.reads() as session:
        return (await session.execute(query)).first() is not None
