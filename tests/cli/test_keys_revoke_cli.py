"""`moonflower keys revoke` run in-process against a real SQLite store: with a Redis URL it
announces the revoked key to running coordinators (by its SHA-256, never the key), and a
Redis that does not answer leaves the key revoked, says so, and still succeeds."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.client import PubSub
from typer.testing import CliRunner, Result

from moonflower.cli.main import app
from moonflower.coordinator.broadcast import CHANNEL
from moonflower.coordinator.redis_store import KEY_PREFIX
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.keys import CreatedKey, authenticate, create_key


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in ("MOONFLOWER_DATABASE_URL", "MOONFLOWER_DATA_DIR", "MOONFLOWER_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "data"


def new_key(data_dir: Path) -> CreatedKey:
    async def main() -> CreatedKey:
        async with await Database.open(default_database_url(data_dir)) as db:
            return await create_key(db)

    return asyncio.run(main())


def is_active(data_dir: Path, key: str) -> bool:
    async def main() -> bool:
        async with await Database.open(default_database_url(data_dir)) as db:
            return await authenticate(db, key) is not None

    return asyncio.run(main())


def revoke(data_dir: Path, key: CreatedKey, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["keys", "revoke", key.key_id, "--data-dir", str(data_dir), *args]
    )


@pytest.fixture
def listening(redis_url: str) -> Iterator[PubSub]:
    """A client subscribed to the coordinators' broadcast channel."""
    client = Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    pubsub.subscribe(f"{KEY_PREFIX}{CHANNEL}")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    yield pubsub
    pubsub.close()
    client.close()


def test_a_revocation_is_announced_over_redis_by_the_keys_hash(
    data_dir: Path, redis_url: str, listening: PubSub, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key(data_dir)
    monkeypatch.setenv("MOONFLOWER_REDIS_URL", redis_url)
    result = revoke(data_dir, key)
    assert result.exit_code == 0, result.output
    assert not is_active(data_dir, key.key)
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = listening.get_message(ignore_subscribe_messages=True, timeout=0.5)
    assert message is not None
    assert hashlib.sha256(key.key.encode()).hexdigest() in message["data"]
    assert key.key not in message["data"]


def test_a_redis_that_does_not_answer_leaves_the_key_revoked_and_says_so(
    data_dir: Path,
) -> None:
    key = new_key(data_dir)
    result = revoke(data_dir, key, "--redis-url", "redis://127.0.0.1:1/0")  # nobody listens
    assert result.exit_code == 0, result.output
    assert "Redis did not answer" in result.output
    assert not is_active(data_dir, key.key)


def test_without_redis_a_revocation_announces_nothing(data_dir: Path) -> None:
    key = new_key(data_dir)
    result = revoke(data_dir, key)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"revoked {key.key_id}"
    assert not is_active(data_dir, key.key)
