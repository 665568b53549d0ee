"""Migrations build the schema tables.py describes, from empty, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, make_url, text

from moonflower.ledger.database import ALEMBIC_INI, Database, default_database_url
from moonflower.ledger.keys import authenticate, create_key
from moonflower.ledger.tables import Base

LEDGER_TABLES = {
    "accounts",
    "api_keys",
    "jobs",
    "served_models",
    "receipts",
    "ledger_transactions",
    "ledger_entries",
    "holds",
    "model_prices",
    "pricing_policy",
    "provider_identities",
    "provider_account_verdicts",
    "users",
    "console_sessions",
    "sign_in_failures",
    "invites",
    "device_logins",
}


def _head() -> str | None:
    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()


async def _tables_and_version(db: Database) -> tuple[set[str], str]:
    async with db.engine.connect() as connection:
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    return tables, str(version)


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_open_migrates_an_empty_database_to_head(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        tables, version = await _tables_and_version(db)
    assert tables == LEDGER_TABLES | {"alembic_version"}
    assert version == _head()


async def test_reopening_keeps_data_and_migrates_nothing(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        created = await create_key(db)
    async with await Database.open(database_url) as db:
        tables, version = await _tables_and_version(db)
        assert await authenticate(db, created.key) is not None
    assert tables == LEDGER_TABLES | {"alembic_version"}
    assert version == _head()


async def test_two_processes_opening_at_once_both_succeed(database_url: str) -> None:
    first, second = await asyncio.gather(Database.open(database_url), Database.open(database_url))
    await first.close()
    await second.close()


async def test_migrated_schema_matches_the_table_definitions(ledger_db: Database) -> None:
    async with ledger_db.engine.connect() as connection:
        diff = await connection.run_sync(_schema_diff)
    assert diff == []


async def test_downgrade_to_base_and_upgrade_again(ledger_db: Database) -> None:
    def downgrade_then_upgrade(connection: Connection) -> set[str]:
        config = Config(str(ALEMBIC_INI))
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        emptied = set(inspect(connection).get_table_names()) & LEDGER_TABLES
        command.upgrade(config, "head")
        return emptied

    async with ledger_db.engine.begin() as connection:
        left_after_downgrade = await connection.run_sync(downgrade_then_upgrade)
    assert left_after_downgrade == set()
    tables, _ = await _tables_and_version(ledger_db)
    assert tables >= LEDGER_TABLES


async def test_sqlite_uses_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    db = await Database.open(default_database_url(data_dir))
    async with db, db.engine.connect() as connection:
        journal = await connection.scalar(text("PRAGMA journal_mode"))
        busy_ms = await connection.scalar(text("PRAGMA busy_timeout"))
        foreign_keys = await connection.scalar(text("PRAGMA foreign_keys"))
    assert (data_dir / "moonflower.db").is_file()
    assert (journal, foreign_keys) == ("wal", 1)
    assert busy_ms >= 1000


def test_default_database_url_points_into_the_data_dir(tmp_path: Path) -> None:
    url = make_url(default_database_url(tmp_path))
    assert url.drivername == "sqlite+aiosqlite"
    assert url.database == str(tmp_path / "moonflower.db")
