"""Stored receipts: a job's verified provider receipt, readable only by the account it
served. Receipts hold hashes, counts and keys — never prompt or completion text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Insert, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from moonflower.ledger.database import Database
from moonflower.ledger.tables import StoredReceipt


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    job_id: str
    account_id: str
    provider_id: str
    receipt_json: str
    signature: str
    signing_public_key: str
    """Base64 P-256 point of the provider key that signed it (from its attested statement)."""


async def store_receipt(db: Database, record: ReceiptRecord) -> None:
    async with db.sessions() as session, session.begin():
        await session.execute(insert_receipt(record))


def insert_receipt(record: ReceiptRecord) -> Insert:
    """The statement that stores `record` (a plain INSERT: no ORM object to track)."""
    return insert(StoredReceipt).values(**_row(record, datetime.now(UTC)))


async def insert_receipts(session: AsyncSession, records: Sequence[ReceiptRecord]) -> None:
    """Store `records` inside the caller's transaction, with one multi-row INSERT."""
    if records:
        now = datetime.now(UTC)
        table = cast(Table, StoredReceipt.__table__)  # no ORM bookkeeping for these rows
        await session.execute(insert(table), [_row(r, now) for r in records])


def _row(record: ReceiptRecord, created_at: datetime) -> dict[str, object]:
    return {
        "job_id": record.job_id,
        "account_id": record.account_id,
        "provider_id": record.provider_id,
        "receipt_json": record.receipt_json,
        "signature": record.signature,
        "signing_public_key": record.signing_public_key,
        "created_at": created_at,
    }


async def find_receipt(db: Database, job_id: str, *, account_id: str) -> ReceiptRecord | None:
    """The receipt of `job_id` if it belongs to `account_id`; None otherwise (unknown or
    someone else's: the two are indistinguishable to the caller)."""
    async with db.reads() as session:
        row = await session.scalar(
            select(StoredReceipt).where(
                StoredReceipt.job_id == job_id, StoredReceipt.account_id == account_id
            )
        )
    if row is None:
        return None
    return ReceiptRecord(
        job_id=row.job_id,
        account_id=row.account_id,
        provider_id=row.provider_id,
        receipt_json=row.receipt_json,
        signature=row.signature,
        signing_public_key=row.signing_public_key,
    )
