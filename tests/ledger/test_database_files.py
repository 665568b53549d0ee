"""The SQLite ledger is private to its owner: the database file and its -wal and -shm files
are 0600 and a directory made for them 0700, whatever the umask; an older world-readable
database is tightened when it is opened. Real SQLite files, opened through `Database.open`."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from moonflower.ledger import keys
from moonflower.ledger.database import Database, default_database_url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The umask most systems start with, which would make new files world-readable."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
async def test_a_new_database_and_its_directory_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "moonflower"
    db = await Database.open(default_database_url(data_dir))
    try:
        await keys.create_key(db)  # a write: the -wal and -shm files exist now
        path = data_dir / "moonflower.db"
        assert mode(data_dir) == 0o700
        assert mode(path) == 0o600
        for suffix in ("-wal", "-shm"):
            assert mode(path.with_name(path.name + suffix)) == 0o600, suffix
    finally:
        await db.close()


@pytest.mark.usefixtures("permissive_umask")
async def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    db = await Database.open(default_database_url(tmp_path))
    await db.close()
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / "moonflower.db") == 0o600


@pytest.mark.usefixtures("permissive_umask")
async def test_a_world_readable_database_is_tightened_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "moonflower.db"
    older = sqlite3.connect(path)  # as an earlier version left it: 0644, WAL files too
    older.execute("PRAGMA journal_mode = WAL")
    older.execute("CREATE TABLE t (x)")
    older.commit()
    wal = path.with_name(path.name + "-wal")
    assert mode(path) == 0o644 and mode(wal) == 0o644
    db = await Database.open(default_database_url(tmp_path))
    older.close()
    await db.close()
    assert mode(path) == 0o600
    assert not wal.exists() or mode(wal) == 0o600
