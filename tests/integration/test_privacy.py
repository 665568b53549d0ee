"""A prompt's text never reaches logs or the database — on SQLite and on a real PostgreSQL.

Every process logs at debug level; after successful, streamed, rejected and too-long
requests carrying a marker, the test greps every log and every stored byte for it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def private_network(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalNetwork]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    network = LocalNetwork(tmp_path, database_url=url)
    try:
        network.start_coordinator()
        network.start_provider()
        yield network
    finally:
        network.stop()


def send_marked_requests(network: LocalNetwork, key: str, marker: str) -> None:
    url = f"{network.base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    prompt = f"Repeat this code exactly: {marker}"
    messages = [{"role": "system", "content": marker}, {"role": "user", "content": prompt}]
    ok = {"model": MODEL, "messages": messages, "max_tokens": 24, "temperature": 0}
    assert httpx.post(url, headers=headers, json=ok, timeout=60).status_code == 200
    streamed = httpx.post(url, headers=headers, json={**ok, "stream": True}, timeout=60)
    assert streamed.status_code == 200
    assert (
        httpx.post(url, headers=headers, json={**ok, "temperature": 9}, timeout=60).status_code
        == 400
    )
    assert (
        httpx.post(url, headers=headers, json={**ok, "extra_field": marker}, timeout=60).status_code
        == 200
    )
    too_long = {**ok, "messages": [{"role": "user", "content": (marker + " ") * 3000}]}
    assert httpx.post(url, headers=headers, json=too_long, timeout=60).status_code == 400
    bad_json = b'{"model": "' + marker.encode() + b'", "messages": ['
    assert httpx.post(url, headers=headers, content=bad_json, timeout=60).status_code == 400


async def stored_text(database_url: str) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            tables = (
                (
                    await conn.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                )
                .scalars()
                .all()
            )
            rows = []
            for table in tables:
                result = await conn.execute(text(f'SELECT row_to_json(t)::text FROM "{table}" t'))
                rows += result.scalars().all()
                jobs = rows
            return "\n".join(jobs)
    finally:
        await engine.dispose()


def test_marker_never_reaches_logs_or_database(private_network: LocalNetwork) -> None:
    key = private_network.create_key()
    marker = "MFMARK" + secrets.token_hex(8)
    send_marked_requests(private_network, key, marker)
    private_network.stop()

    logs = private_network.logs()
    assert "job " in logs and "DEBUG" in logs  # the logs are real and verbose
    assert marker not in logs

    if private_network.database_url:
        stored = asyncio.run(stored_text(private_network.database_url))
        assert '"status"' in stored  # jobs were recorded in PostgreSQL
    else:
        files = list(private_network.data_dir.glob("moonflower.db*"))
        assert files
        stored = "".join(f.read_bytes().decode("latin-1") for f in files)
        assert "completed" in stored
    assert marker not in stored
    assert marker.lower() not in stored.lower()
