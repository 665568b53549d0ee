"""The ledger's connection to its database: engine, sessions, and migration on open.

Owns how Moonflower talks to SQLite (aiosqlite) or PostgreSQL (asyncpg) and brings the schema
to the newest Alembic revision before anyone uses it. Holds no queries of its own and reads no
settings or environment variables: callers pass the URL in.

SQLite runs in WAL mode with a busy timeout and foreign keys on. Every transaction of
`Database.sessions` starts with BEGIN IMMEDIATE: writers queue instead of failing with
"database is locked" when a read transaction tries to become a write one, so read-modify-write
sequences (balances) stay serializable. Within a process they queue on a one-connection pool,
across processes on the busy timeout. Transactions that only read go through
`Database.reads`: a second pool on the same file whose connections are `query_only` and begin
deferred, so in WAL mode they never wait for a writer, nor a writer for them. PostgreSQL needs
none of this; its reads share the one pool.

Every wait is bounded by `timeout_s` (a few seconds): the pool checkout, SQLite's busy
timeout, PostgreSQL's connect timeout and its `statement_timeout` (set on every connection;
migrations lift it for their own transaction). A session that fails because the store is
locked, down or too slow raises `StoreUnavailable`: `Sessions` is the one place where the
database library's errors are translated into the exception tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Connection, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from moonflower.errors import StoreUnavailable
from moonflower.ledger.tables import Base

log = logging.getLogger(__name__)

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
DEFAULT_TIMEOUT_S = 5.0
"""The longest one wait on the store may take: for a pooled connection, for SQLite's write
lock, for a PostgreSQL connection or statement."""
STORE_RETRY_AFTER_S = 2
"""What a caller turned away by `StoreUnavailable` is told to wait before trying again."""
READ_POOL_SIZE = 4
"""Connections reading a SQLite file at once; WAL readers do not block one another."""
# Held while migrating so two processes starting together do not both create the tables.
# Any constant works as long as every Moonflower process uses the same one.
_POSTGRES_MIGRATION_LOCK = 0x6D66_6C67


def default_database_url(data_dir: Path) -> str:
    """The embedded SQLite database inside `data_dir`."""
    return f"sqlite+aiosqlite:///{data_dir.expanduser() / 'moonflower.db'}"


def create_engine(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncEngine:
    """An async engine for `url`, configured for the ledger, without migrating anything.

    For a SQLite file, the directory holding it is created if missing, and the file is made
    private (`keep_private`). Every wait on the store is bounded by `timeout_s` (see the
    module docstring).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _create_postgres_engine(parsed, timeout_s)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_timeout=timeout_s)
    database = parsed.database
    if database and _is_sqlite_file(database):
        keep_private(Path(database).expanduser())
    # One connection: SQLite has one writer at a time, and every transaction here takes the
    # write lock (BEGIN IMMEDIATE). Queued on the pool, a transaction starts the moment the
    # previous one ends; queued on the busy timeout, it would sleep in SQLite's back-off
    # steps (up to 100 ms each) while the lock was free again.
    engine = create_async_engine(parsed, pool_size=1, max_overflow=0, pool_timeout=timeout_s)
    event.listen(engine.sync_engine, "connect", _sqlite_connection_setup(timeout_s))
    event.listen(engine.sync_engine, "begin", _begin_immediate)
    return engine


def create_read_engine(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncEngine | None:
    """A second engine on a SQLite file for transactions that only read: its connections
    refuse writes (`PRAGMA query_only`) and begin deferred, so they take no write lock.
    None where the writers' engine serves reads too (PostgreSQL, an in-memory database)."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not _is_sqlite_file(database):
        return None
    engine = create_async_engine(
        parsed, pool_size=READ_POOL_SIZE, max_overflow=0, pool_timeout=timeout_s
    )
    event.listen(
        engine.sync_engine, "connect", _sqlite_connection_setup(timeout_s, is_read_only=True)
    )
    event.listen(engine.sync_engine, "begin", _begin_deferred)
    return engine


def keep_private(path: Path) -> None:
    """Make the SQLite file at `path` readable and writable by its owner only (0600), before
    SQLite opens it: a missing file is created empty with that mode (SQLite takes an empty
    file as a new database, and gives its -wal and -shm files the main file's mode), in a
    directory created 0700 when missing; an existing file of ours, and its -wal and -shm,
    lose any group and other permissions. The ledger holds every account and key hash."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            status = file.stat()
            if status.st_uid == os.getuid() and status.st_mode & 0o077:
                file.chmod(status.st_mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to change: say so, and carry on
            log.warning("could not make %s private: %s", file, exc.strerror)


def _is_sqlite_file(database: str | None) -> bool:
    return bool(database) and database != ":memory:" and not str(database).startswith("file:")


def _create_postgres_engine(parsed: URL, timeout_s: float) -> AsyncEngine:
    """asyncpg connects within `timeout_s` and the server cancels any statement (a lock wait
    included) that runs longer; `Sessions` turns either into `StoreUnavailable`."""
    connect_args: dict[str, Any] = {}
    if parsed.get_driver_name() == "asyncpg":
        connect_args = {
            "timeout": timeout_s,
            "server_settings": {"statement_timeout": str(max(1, round(timeout_s * 1000)))},
        }
    return create_async_engine(parsed, pool_timeout=timeout_s, connect_args=connect_args)


def _sqlite_connection_setup(
    timeout_s: float, *, is_read_only: bool = False
) -> Callable[[Any, Any], None]:
    busy_timeout_ms = max(1, round(timeout_s * 1000))

    def configure(dbapi_connection: Any, _record: Any) -> None:
        # Stop the sqlite3 driver from issuing its own (deferred, DML-only) BEGIN; the
        # engine's "begin" listener says how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if is_read_only:
                cursor.execute("PRAGMA query_only = ON")
        finally:
            cursor.close()

    return configure


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_deferred(connection: Connection) -> None:
    # One snapshot for the whole read transaction, without the write lock.
    connection.exec_driver_sql("BEGIN")


async def _use_write_ahead_log(engine: AsyncEngine, timeout_s: float) -> None:
    """Switch the SQLite file to WAL, which then sticks to the file.

    Done once per open, with retries: SQLite refuses the switch at once, without waiting on
    the busy timeout, while another connection (another process opening the same new file)
    holds a lock.
    """
    deadline = time.monotonic() + timeout_s
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


def lift_statement_timeout(connection: Connection) -> None:
    """For the rest of this transaction, no statement time-out: a migration may wait for
    another process's and may rewrite big tables, and it is not a request."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")


def _upgrade_to_head(connection: Connection) -> None:
    lift_statement_timeout(connection)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_POSTGRES_MIGRATION_LOCK})")
    config = Config(str(ALEMBIC_INI))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


_SQLITE_UNAVAILABLE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
)
# PostgreSQL SQLSTATE classes: connection exception, insufficient resources, operator
# intervention (57014 is a statement cancelled by statement_timeout); and lock_not_available.
_POSTGRES_UNAVAILABLE_CLASSES = ("08", "53", "57")
_POSTGRES_LOCK_NOT_AVAILABLE = "55P03"


def _is_store_trouble(error: BaseException) -> bool:
    """Whether `error` says the store is locked, down, overloaded or too slow (worth a
    retry later), rather than that a statement or its data is wrong (a bug)."""
    if isinstance(error, sa_exc.TimeoutError | OSError):
        return True  # no pooled connection in time; asyncpg's refused or timed-out connect
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    original = error.orig
    if isinstance(original, sqlite3.Error):
        return str(getattr(original, "sqlite_errorname", "")).startswith(_SQLITE_UNAVAILABLE)
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return (
            sqlstate[:2] in _POSTGRES_UNAVAILABLE_CLASSES
            or sqlstate == _POSTGRES_LOCK_NOT_AVAILABLE
        )
    return isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)


class Sessions:
    """Opens sessions on one engine, as `async with sessions() as session` (transactions
    begun on demand) or `async with sessions.begin() as session` (one transaction, committed
    at the end). A session that fails because the store is in trouble (`_is_store_trouble`)
    raises `StoreUnavailable` instead, whatever statement failed: callers see one error."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._factory = async_sessionmaker(engine, expire_on_commit=False)

    def __call__(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._translated(self._factory)

    def begin(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._translated(self._factory.begin)

    @staticmethod
    @asynccontextmanager
    async def _translated(
        opener: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    ) -> AsyncIterator[AsyncSession]:
        try:
            async with opener() as session:
                yield session
        except Exception as error:
            if not _is_store_trouble(error):
                raise
            log.warning("the database is unavailable: %s", _summary(error))
            raise StoreUnavailable(retry_after_s=STORE_RETRY_AFTER_S) from error


def _summary(error: BaseException) -> str:
    """The error without the statement or its parameters."""
    cause = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    return f"{type(cause).__name__}: {cause}"


class Database:
    """An open, migrated ledger database: its engines and their sessions.

    `sessions` is for transactions that write (or read to write); `reads` for those that
    only read, which never wait for a writer on SQLite and never hold one up."""

    def __init__(self, engine: AsyncEngine, read_engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.read_engine = read_engine or engine
        self.sessions = Sessions(engine)
        self.reads = Sessions(self.read_engine)

    @classmethod
    async def open(cls, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Database:
        """Connect to `url` and migrate it to the newest revision before returning. Every
        wait on the store is bounded by `timeout_s` from then on."""
        engine = create_engine(url, timeout_s=timeout_s)
        try:
            if engine.dialect.name == "sqlite":
                await _use_write_ahead_log(engine, timeout_s)
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade_to_head)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, create_read_engine(url, timeout_s=timeout_s))

    async def close(self) -> None:
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
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

    def engines(self) -> list[AsyncEngine]:
        """The engine that writes, and the one that only reads if it is another."""
        return [self.engine] if self.read_engine is self.engine else [self.engine, self.read_engine]

    def insert_on_conflict(self, entity: type[Base]) -> postgresql.Insert | sqlite.Insert:
        """An INSERT for this backend that supports `on_conflict_do_nothing/_update`."""
        if self.dialect_name == "postgresql":
            return postgresql.insert(entity)
        if self.dialect_name == "sqlite":
            return sqlite.insert(entity)
        raise NotImplementedError(f"the ledger does not support {self.dialect_name!r}")
