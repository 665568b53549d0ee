"""Every row of every table in a ledger database, as text: what a test searches to show a
secret (a raw key, a password, a token) was never stored."""

from __future__ import annotations

from sqlalchemy import MetaData, select

from moonflower.ledger.database import Database


async def all_rows_as_text(db: Database) -> str:
    async with db.engine.connect() as connection:
        metadata = MetaData()
        await connection.run_sync(metadata.reflect)
        rows = [
            row
            for table in metadata.sorted_tables
            for row in (await connection.execute(select(table))).all()
        ]
    return repr(rows)
