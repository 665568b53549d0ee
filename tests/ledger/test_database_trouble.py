"""A locked, slow or unreachable database: every wait is bounded, the failure surfaces as
`StoreUnavailable` (never a library error), and reads do not wait for SQLite's write lock.

The SQLite lock is held by a plain `sqlite3` connection, as another process would hold it;
PostgreSQL's statement time-out is met by a real `pg_sleep` and a real row lock.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url, select, text, update

from moonflower.errors import StoreUnavailable
from moonflower.ledger import book, jobs, keys, pricing, receipts, statements
from moonflower.ledger.accounts import create_account
from moonflower.ledger.database import (
    STORE_RETRY_AFTER_S,
    Database,
    create_engine,
    default_database_url,
    lift_statement_timeout,
)
from moonflower.ledger.tables import Account, ApiKey
from tests.support.postgres import PostgresServer

BOUND_S = 0.5
"""The time bound the databases here are opened with."""
SLACK_S = 1.5
"""What a shared, busy test machine may add to a bound before a test calls it broken."""
PRICES = pricing.PriceList(default=pricing.Price(1, 2))


def sqlite_file(url: str) -> str:
    database = make_url(url).database
    assert database is not None
    return database


@contextmanager
def write_lock_held(url: str) -> Iterator[None]:
    """Another process's write transaction on the SQLite file, open until the block ends."""
    other = sqlite3.connect(sqlite_file(url), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    url = default_database_url(tmp_path)
    async with await Database.open(url, timeout_s=BOUND_S) as db:
        yield db


async def funded_key(db: Database) -> keys.CreatedKey:
    created = await keys.create_key(db, account_name=f"consumer-{uuid.uuid4().hex[:8]}")
    await book.deposit(db, created.account_id, 1_000_000)
    return created


def url_of(db: Database) -> str:
    return db.engine.url.render_as_string(hide_password=False)


# --- SQLite ----------------------------------------------------------------------------------


async def test_a_write_while_another_process_holds_the_lock_fails_within_the_bound(
    sqlite_db: Database,
) -> None:
    created = await funded_key(sqlite_db)
    with write_lock_held(url_of(sqlite_db)):
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await book.deposit(sqlite_db, created.account_id, 1)
        elapsed = time.monotonic() - began
    assert elapsed < BOUND_S + SLACK_S
    assert raised.value.retry_after_s == STORE_RETRY_AFTER_S >= 1
    assert isinstance(raised.value.__cause__, sa_exc.OperationalError)
    assert "locked" in str(raised.value.__cause__)
    assert "locked" not in raised.value.message  # the caller is told to retry, not why


async def test_writers_queued_in_the_process_all_fail_within_twice_the_bound(
    sqlite_db: Database,
) -> None:
    """One waits for the other process's lock, the rest for the one writer connection."""
    created = await funded_key(sqlite_db)
    with write_lock_held(url_of(sqlite_db)):
        began = time.monotonic()
        outcomes = await asyncio.gather(
            *(book.deposit(sqlite_db, created.account_id, 1) for _ in range(4)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - began
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
    assert elapsed < 2 * BOUND_S + SLACK_S


async def test_reads_succeed_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    # A read that waited for the lock would fail after the bound instead of finishing at once.
    url = default_database_url(tmp_path)
    async with await Database.open(url, timeout_s=3) as db:
        created = await funded_key(db)
        await jobs.note_models_served(db, ["served-model"])
        with write_lock_held(url):
            began = time.monotonic()
            caller = await keys.authenticate(db, created.key)
            prices = await pricing.load_price_list(db, PRICES)
            usage = await statements.usage(db, created.account_id, limit=10)
            earned = await statements.total_earned(db, created.account_id)
            served = await jobs.has_been_served(db, "served-model")
            receipt = await receipts.find_receipt(db, "no-such-job", account_id=created.account_id)
            listed = await jobs.list_jobs(db, limit=5)
            elapsed = time.monotonic() - began
    assert caller is not None and caller.account_id == created.account_id
    assert prices == PRICES
    assert usage.lines == [] and earned == 0
    assert served is True
    assert receipt is None and listed == []
    assert elapsed < SLACK_S


async def test_a_key_authenticates_at_once_while_the_lock_is_held_and_is_marked_later(
    sqlite_db: Database,
) -> None:
    created = await funded_key(sqlite_db)
    with write_lock_held(url_of(sqlite_db)):
        caller = await keys.authenticate(sqlite_db, created.key)
        assert caller is not None and caller.is_use_stale(datetime.now(UTC))
        with pytest.raises(StoreUnavailable):
            await keys.note_use(sqlite_db, caller)
    await keys.note_use(sqlite_db, caller)
    async with sqlite_db.reads() as session:
        marked = await session.scalar(
            select(ApiKey.last_used_at).where(ApiKey.id == created.key_id)
        )
    assert marked is not None


async def test_the_same_write_succeeds_once_the_lock_is_released(sqlite_db: Database) -> None:
    created = await funded_key(sqlite_db)
    with write_lock_held(url_of(sqlite_db)), pytest.raises(StoreUnavailable):
        await book.deposit(sqlite_db, created.account_id, 5)
    await book.deposit(sqlite_db, created.account_id, 5)
    async with sqlite_db.reads() as session:
        balance = await session.scalar(
            select(Account.balance_micro_usd).where(Account.id == created.account_id)
        )
    assert balance == 1_000_005  # the refused deposit left nothing behind


async def test_read_sessions_refuse_to_write(sqlite_db: Database) -> None:
    account = await create_account(sqlite_db, "reader", "consumer")
    with pytest.raises(sa_exc.OperationalError, match="readonly"):
        async with sqlite_db.reads() as session:
            await session.execute(
                update(Account).where(Account.id == account.id).values(balance_micro_usd=1)
            )


async def test_a_read_transaction_does_not_hold_up_a_writer(sqlite_db: Database) -> None:
    created = await funded_key(sqlite_db)
    async with sqlite_db.reads() as session:
        before = await session.scalar(
            select(Account.balance_micro_usd).where(Account.id == created.account_id)
        )
        await book.deposit(sqlite_db, created.account_id, 7)  # while the read is open
        same_snapshot = await session.scalar(
            select(Account.balance_micro_usd).where(Account.id == created.account_id)
        )
    assert before == same_snapshot == 1_000_000  # one snapshot for the whole read
    assert await keys.authenticate(sqlite_db, created.key) is not None


async def test_a_statement_that_is_wrong_is_not_taken_for_store_trouble(
    sqlite_db: Database,
) -> None:
    with pytest.raises(sa_exc.OperationalError, match="no such table"):
        async with sqlite_db.sessions() as session:
            await session.execute(text("SELECT * FROM no_such_table"))
    await keys.create_key(sqlite_db, account_name="twice")
    with pytest.raises(sa_exc.IntegrityError):
        async with sqlite_db.sessions.begin() as session:
            await session.execute(text("INSERT INTO api_keys SELECT * FROM api_keys"))


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
async def postgres_db(postgres_server: PostgresServer) -> AsyncIterator[Database]:
    async with await Database.open(postgres_server.create_database(), timeout_s=BOUND_S) as db:
        yield db


@pytest.mark.postgres
async def test_a_statement_longer_than_the_bound_is_cancelled(postgres_db: Database) -> None:
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        async with postgres_db.sessions() as session:
            await session.execute(text(f"SELECT pg_sleep({BOUND_S * 20})"))
    assert time.monotonic() - began < BOUND_S + SLACK_S
    assert "statement timeout" in str(raised.value.__cause__)
    async with postgres_db.reads() as session:  # the pool is still usable
        assert await session.scalar(text("SELECT 1")) == 1


@pytest.mark.postgres
async def test_a_write_waiting_on_a_locked_row_gives_up_within_the_bound(
    postgres_db: Database,
) -> None:
    created = await funded_key(postgres_db)
    async with postgres_db.engine.connect() as holder:
        await holder.execute(
            update(Account)
            .where(Account.id == created.account_id)
            .values(balance_micro_usd=Account.balance_micro_usd)
        )  # the row stays locked until this transaction ends
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await book.deposit(postgres_db, created.account_id, 1)
        assert time.monotonic() - began < BOUND_S + SLACK_S
        caller = await keys.authenticate(postgres_db, created.key)  # reads do not wait
        assert caller is not None
        await holder.rollback()
    await book.deposit(postgres_db, created.account_id, 1)


@pytest.mark.postgres
async def test_a_refused_connection_is_store_trouble_at_once() -> None:
    with socket_nobody_listens_on() as port:
        url = f"postgresql+asyncpg://moonflower@127.0.0.1:{port}/moonflower"
        async with Database(create_engine(url, timeout_s=BOUND_S)) as db:
            began = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                await jobs.has_been_served(db, "any")
            assert time.monotonic() - began < BOUND_S + SLACK_S
    assert isinstance(raised.value.__cause__, OSError)


@pytest.mark.postgres
async def test_a_connection_the_server_ends_is_store_trouble_and_the_pool_recovers(
    postgres_db: Database,
) -> None:
    """The server ending a session (as `pg_ctl stop` ends them all) mid-statement."""
    with pytest.raises(StoreUnavailable) as raised:
        async with postgres_db.sessions() as session:
            await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    assert isinstance(raised.value.__cause__, sa_exc.DBAPIError)
    assert await jobs.has_been_served(postgres_db, "any") is False


@pytest.mark.postgres
async def test_migrations_and_lifted_transactions_are_not_bounded(postgres_db: Database) -> None:
    async with postgres_db.engine.begin() as connection:
        await connection.run_sync(lift_statement_timeout)
        await connection.execute(text(f"SELECT pg_sleep({BOUND_S * 2})"))
    async with postgres_db.engine.begin() as connection:  # lifted for that transaction only
        assert await connection.scalar(text("SHOW statement_timeout")) == f"{int(BOUND_S * 1000)}ms"


@contextmanager
def socket_nobody_listens_on() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port: int = probe.getsockname()[1]
        yield port


async def test_postgres_reads_share_the_writers_pool_and_sqlite_reads_do_not(
    sqlite_db: Database,
) -> None:
    assert sqlite_db.read_engine is not sqlite_db.engine
    postgres = Database(create_engine("postgresql+asyncpg://x@127.0.0.1:1/x"))
    assert postgres.read_engine is postgres.engine
    await postgres.close()
