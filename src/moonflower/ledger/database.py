"""The ledger's connection to its database: engine, sessions, and migration on open.

Owns how Moonflower talks to SQLite (aiosqlite) or PostgreSQL (asyncpg) and brings the schema
to the newest Alembic revision before anyone uses it. Holds no queries of its own and reads no
settings or environment variables: callers pass the URL in.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and every transaction starts
with BEGIN IMMEDIATE: writers queue instead of failing with "database is locked" when a read
transaction tries to become a write one, so read-modify-write sequences (balances) stay
serializable. Within a process they queue on a one-connection pool, across processes on the
busy timeout. PostgreSQL needs none of this.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from moonflower.ledger.tables import Base

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Held while migrating so two processes starting together do not both create the tables.
# Any constant works as long as every Moonflower process uses the same one.
_POSTGRES_MIGRATION_LOCK = 0x6D66_6C67


def default_database_url(data_dir: Path) -> str:
    """The embedded SQLite database inside `data_dir`."""
    return f"sqlite+aiosqlite:///{data_dir.expanduser() / 'moonflower.db'}"


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `url`, configured for the ledger, without migrating anything.

    For a SQLite file, the directory holding it is created if missing.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # One connection: SQLite has one writer at a time, and every transaction here takes the
    # write lock (BEGIN IMMEDIATE). Queued on the pool, a transaction starts the moment the
    # previous one ends; queued on the busy timeout, it would sleep in SQLite's back-off
    # steps (up to 100 ms each) while the lock was free again.
    engine = create_async_engine(
        parsed, pool_size=1, max_overflow=0, pool_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000
    )
    event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
    event.listen(engine.sync_engine, "begin", _begin_immediate)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Stop the sqlite3 driver from issuing its own (deferred, DML-only) BEGIN; see _begin_immediate.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


async def _use_write_ahead_log(engine: AsyncEngine) -> None:
    """Switch the SQLite file to WAL, which then sticks to the file.

    Done once per open, with retries: SQLite refuses the switch at once, without waiting on
    the busy timeout, while another connection (another process opening the same new file)
    holds a lock.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection  # aiosqlite's; bypasses SQLAlchemy's BEGIN
        while True:
            try:
                cursor = await driver.execute("PRAGMA journal_mode = WAL")
                await cursor.close()
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)


def _upgrade_to_head(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_POSTGRES_MIGRATION_LOCK})")
    config = Config(str(ALEMBIC_INI))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class Database:
    """An open, migrated ledger database: one async engine and its session factory."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, expire_on_commit=False
        )

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect to `url` and migrate it to the newest revision before returning."""
        engine = create_engine(url)
        try:
            if engine.dialect.name == "sqlite":
                await _use_write_ahead_log(engine)
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade_to_head)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def dialect_name(self) -> str:
        return self.engine.dialect.name

    def insert_on_conflict(self, entity: type[Base]) -> postgresql.Insert | sqlite.Insert:
        """An INSERT for this backend that supports `on_conflict_do_nothing/_update`."""
        if self.dialect_name == "postgresql":
            return postgresql.insert(entity)
        if self.dialect_name == "sqlite":
            return sqlite.insert(entity)
        raise NotImplementedError(f"the ledger does not support {self.dialect_name!r}")
