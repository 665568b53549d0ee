"""API keys: issued once, stored only as a hash, authenticated, listed and revoked."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, make_url, select, update

from moonflower.errors import InvalidRequest
from moonflower.ledger.database import Database
from moonflower.ledger.keys import (
    Caller,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
)
from moonflower.ledger.tables import ApiKey


async def _all_rows_as_text(db: Database) -> str:
    async with db.engine.connect() as connection:
        metadata = MetaData()
        await connection.run_sync(metadata.reflect)
        rows = [
            row
            for table in metadata.sorted_tables
            for row in (await connection.execute(select(table))).all()
        ]
    return repr(rows)


async def test_created_key_authenticates_as_its_account(ledger_db: Database) -> None:
    created = await create_key(ledger_db, name="laptop")

    assert created.key.startswith("mf-")
    assert len(created.key) == 46
    assert created.display_prefix == created.key[:11] + "…"
    caller = await authenticate(ledger_db, created.key)
    assert caller == Caller(account_id=created.account_id, key_id=created.key_id)


async def test_keys_share_an_account_by_name(ledger_db: Database) -> None:
    first = await create_key(ledger_db)
    second = await create_key(ledger_db, account_name="default")
    other = await create_key(ledger_db, account_name="team")

    assert first.account_id == second.account_id != other.account_id
    assert first.key != second.key


@pytest.mark.parametrize(
    "raw_key",
    [
        "",
        "mf-",
        "Bearer mf-x",
        "sk-" + "a" * 43,
        "mf-" + "a" * 42,
        "mf-" + "a" * 44,
        "mf-" + "!" * 43,
    ],
)
async def test_malformed_keys_are_refused(ledger_db: Database, raw_key: str) -> None:
    assert await authenticate(ledger_db, raw_key) is None


async def test_unknown_well_formed_key_is_refused(ledger_db: Database) -> None:
    await create_key(ledger_db)
    assert await authenticate(ledger_db, "mf-" + secrets.token_urlsafe(32)) is None


async def test_revoked_key_is_refused_and_listed_as_revoked(ledger_db: Database) -> None:
    kept = await create_key(ledger_db, name="kept")
    gone = await create_key(ledger_db, name="gone")

    assert await revoke_key(ledger_db, gone.key_id) is True
    assert await authenticate(ledger_db, gone.key) is None
    assert await authenticate(ledger_db, kept.key) is not None
    assert await revoke_key(ledger_db, gone.key_id) is False
    by_id = {info.key_id: info for info in await list_keys(ledger_db)}
    assert by_id[gone.key_id].revoked_at is not None
    assert by_id[kept.key_id].revoked_at is None


async def test_revoke_by_display_prefix_needs_exactly_one_match(ledger_db: Database) -> None:
    first = await create_key(ledger_db)
    second = await create_key(ledger_db)

    assert await revoke_key(ledger_db, "mf-") is False  # matches both
    assert await revoke_key(ledger_db, "nothing-like-it") is False
    assert await revoke_key(ledger_db, first.display_prefix) is True
    other_case = "mf-" + second.display_prefix[3:].swapcase()
    if other_case != second.display_prefix:  # keys are case-sensitive, even on SQLite
        assert await revoke_key(ledger_db, other_case) is False
    assert await revoke_key(ledger_db, second.display_prefix[:9]) is True
    assert await authenticate(ledger_db, first.key) is None
    assert await authenticate(ledger_db, second.key) is None


async def test_revoke_by_the_raw_key_itself(ledger_db: Database) -> None:
    created = await create_key(ledger_db)
    assert await revoke_key(ledger_db, created.key) is True
    assert await authenticate(ledger_db, created.key) is None


async def test_list_keys_describes_every_key(ledger_db: Database) -> None:
    before = datetime.now(UTC)
    created = await create_key(ledger_db, account_name="team", name="ci")

    [info] = await list_keys(ledger_db)
    assert (info.key_id, info.display_prefix) == (created.key_id, created.display_prefix)
    assert (info.account_id, info.account_name, info.name) == (created.account_id, "team", "ci")
    assert info.created_at.tzinfo is UTC
    assert before <= info.created_at <= datetime.now(UTC)
    assert info.last_used_at is None
    assert info.revoked_at is None


async def test_last_used_at_is_written_at_most_once_a_minute(ledger_db: Database) -> None:
    created = await create_key(ledger_db)

    async def last_used() -> datetime | None:
        [info] = await list_keys(ledger_db)
        return info.last_used_at

    await authenticate(ledger_db, created.key)
    first_use = await last_used()
    assert first_use is not None
    await authenticate(ledger_db, created.key)
    assert await last_used() == first_use

    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    async with ledger_db.sessions.begin() as session:
        await session.execute(update(ApiKey).values(last_used_at=long_ago))
    await authenticate(ledger_db, created.key)
    refreshed = await last_used()
    assert refreshed is not None
    assert refreshed > first_use


async def test_raw_key_is_never_stored_or_logged(
    ledger_db: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create_key(ledger_db)
    await authenticate(ledger_db, created.key)
    secret_part = created.key.removeprefix("mf-")

    rows = await _all_rows_as_text(ledger_db)
    assert created.key_id in rows  # we are looking at the right data
    assert secret_part not in rows
    assert secret_part not in caplog.text
    if ledger_db.dialect_name == "sqlite":
        await ledger_db.close()  # checkpoints the WAL; its leftovers are read below anyway
        database_file = Path(str(make_url(database_url).database))
        stored = b"".join(path.read_bytes() for path in database_file.parent.iterdir())
        assert created.key_id.encode() in stored
        assert secret_part.encode() not in stored


async def test_bad_names_are_refused(ledger_db: Database) -> None:
    with pytest.raises(InvalidRequest):
        await create_key(ledger_db, account_name="")
    with pytest.raises(InvalidRequest):
        await create_key(ledger_db, name="x" * 201)
    assert await list_keys(ledger_db) == []
