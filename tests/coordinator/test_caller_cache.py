"""Remembering whose an API key is: a remembered key needs no database transaction until
its entry expires, a revoked key stops working once it has, and unknown or revoked keys are
never remembered. Authenticating only reads; the key's use is marked in the background."""

from __future__ import annotations

from pathlib import Path

from moonflower.coordinator.auth import CallerCache
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.keys import create_key, list_keys, revoke_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingDatabase:
    """The database, counting the read sessions opened on it (one per authentication)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.engine = db.engine
        self.opened = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    @property
    def reads(self) -> object:
        self.opened += 1
        return self._db.reads


async def test_a_known_key_is_remembered_until_it_expires(tmp_path: Path) -> None:
    async with await Database.open(default_database_url(tmp_path)) as db:
        created = await create_key(db)
        counting = CountingDatabase(db)
        clock = Clock()
        callers = CallerCache(counting, ttl_s=5, clock=clock)  # type: ignore[arg-type]
        first = await callers.caller(created.key)
        assert first is not None and first.account_id == created.account_id
        opened = counting.opened
        for _ in range(10):
            assert await callers.caller(created.key) == first
        assert counting.opened == opened  # no database work while remembered
        assert await revoke_key(db, created.key_id)
        clock.now += 4.9
        assert await callers.caller(created.key) == first  # still within the cache time
        clock.now += 0.2
        assert await callers.caller(created.key) is None  # expired: the ledger says revoked
        assert counting.opened > opened
        await callers.marks_written()


async def test_unknown_and_revoked_keys_are_never_remembered(tmp_path: Path) -> None:
    async with await Database.open(default_database_url(tmp_path)) as db:
        created = await create_key(db)
        assert await revoke_key(db, created.key_id)
        other = created.key[:-1] + ("a" if created.key[-1] != "a" else "b")
        counting = CountingDatabase(db)
        callers = CallerCache(counting, ttl_s=60, clock=Clock())  # type: ignore[arg-type]
        for key in (created.key, other):
            assert await callers.caller(key) is None
            opened = counting.opened
            assert await callers.caller(key) is None
            assert counting.opened == opened + 1


async def test_a_zero_cache_time_asks_every_time(tmp_path: Path) -> None:
    async with await Database.open(default_database_url(tmp_path)) as db:
        created = await create_key(db)
        callers = CallerCache(db, ttl_s=0, clock=Clock())
        assert await callers.caller(created.key) is not None
        assert await revoke_key(db, created.key_id)
        assert await callers.caller(created.key) is None
        await callers.marks_written()


async def test_a_key_is_marked_used_once_after_it_authenticates(tmp_path: Path) -> None:
    async with await Database.open(default_database_url(tmp_path)) as db:
        created = await create_key(db)
        callers = CallerCache(db, ttl_s=0, clock=Clock())
        caller = await callers.caller(created.key)
        assert caller is not None and caller.last_used_at is None
        await callers.marks_written()
        [info] = await list_keys(db)
        assert info.last_used_at is not None
        again = await callers.caller(created.key)
        assert again is not None and again.last_used_at == info.last_used_at
        await callers.marks_written()
        [still] = await list_keys(db)
        assert still.last_used_at == info.last_used_at  # fresh: not written again


class ForgettingDatabase(CountingDatabase):
    """Counts reads, and makes the cache forget (as a broadcast revocation would) while a
    read is under way."""

    callers: CallerCache

    @property
    def reads(self) -> object:
        self.callers.forget_all()
        return super().reads


async def test_a_forgotten_key_is_forgotten_at_once_however_long_it_would_be_remembered(
    tmp_path: Path,
) -> None:
    async with await Database.open(default_database_url(tmp_path)) as db:
        created = await create_key(db)
        kept = await create_key(db)
        callers = CallerCache(db, ttl_s=3600, clock=Clock())
        assert await callers.caller(created.key) is not None
        assert await callers.caller(kept.key) is not None
        key_hash = await revoke_key(db, created.key_id)
        assert key_hash is not None
        assert await callers.caller(created.key) is not None  # remembered
        callers.forget(key_hash)
        callers.forget("not a hash")  # ignored
        assert await callers.caller(created.key) is None
        assert await revoke_key(db, kept.key_id)
        assert await callers.caller(kept.key) is not None  # still remembered
        callers.forget_all()
        assert await callers.caller(kept.key) is None
        await callers.marks_written()


async def test_a_read_under_way_when_keys_are_forgotten_is_used_once_not_remembered(
    tmp_path: Path,
) -> None:
    async with await Database.open(default_database_url(tmp_path)) as db:
        created = await create_key(db)
        forgetting = ForgettingDatabase(db)
        callers = CallerCache(forgetting, ttl_s=3600, clock=Clock())  # type: ignore[arg-type]
        forgetting.callers = callers
        assert await callers.caller(created.key) is not None
        opened = forgetting.opened
        assert await callers.caller(created.key) is not None
        assert forgetting.opened == opened + 1  # the first answer was not remembered
        await callers.marks_written()
