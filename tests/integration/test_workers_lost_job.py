"""SIGKILL the replica running a stream, as real processes (`coordinator serve --workers 2`
on PostgreSQL and Redis, the real model's provider): the consumer's stream ends, the provider
serves again through the other worker within seconds, a new request succeeds, and the killed
job is settled exactly once by a survivor from the tally kept beside its lease — the
consumer pays what its record says, the provider earns its share, and no hold remains."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from moonflower.coordinator.lost_jobs import LeaseTally
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Hold, Job
from tests.integration.test_workers import chat, providers_at, workers
from tests.support.cluster import redis_url_for_cluster
from tests.support.money import accounts
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, wait_until
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

MODEL = "smollm2-135m-instruct"
LEASE_S = 3


@pytest.fixture(scope="module")
def network(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("lost-job"),
        database_url=postgres_server.create_database(),
        log_level="info",
        settings={"REDIS_URL": redis_url_for_cluster(redis_server), "HOLD_LEASE_S": str(LEASE_S)},
    )
    try:
        network.coordinator = network.spawn(
            "coordinator",
            "coordinator",
            "serve",
            "--workers",
            "2",
            "--port",
            str(network.port),
            *network.db_args(),
        )
        wait_until(
            lambda: len(workers(network.coordinator)) == 2,  # type: ignore[arg-type]
            STARTUP_TIMEOUT_S,
            "two workers to serve",
        )
        yield network
    finally:
        network.stop()


def rows(network: LocalNetwork, table: type[Hold] | type[Job]) -> list[Any]:
    async def read() -> list[Any]:
        assert network.database_url is not None
        db = await Database.open(network.database_url)
        try:
            async with db.sessions() as session:
                return list((await session.scalars(select(table))).all())
        finally:
            await db.close()

    return asyncio.run(read())


def billed(tally: str | None) -> int:
    """Completion tokens a lease tally bills (0 without one)."""
    return 0 if tally is None else LeaseTally.from_text(tally).record.billed_completion_tokens


class Stream:
    """A long streamed chat completion read in a thread: how many chunks came, and how it
    ended."""

    def __init__(self, network: LocalNetwork, key: str) -> None:
        self.chunks = 0
        self.ended: str | None = None
        self._thread = threading.Thread(target=self._read, args=(network, key), daemon=True)
        self._thread.start()

    def _read(self, network: LocalNetwork, key: str) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count from 1 to 2000, one per line."}],
            "max_tokens": 4000,
            "temperature": 0,
            "stream": True,
        }
        try:
            with httpx.stream(
                "POST",
                f"{network.base_url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.chunks += 1
            self.ended = "closed"
        except httpx.HTTPError as error:
            self.ended = type(error).__name__

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def test_a_killed_replicas_stream_is_settled_once_by_a_survivor(network: LocalNetwork) -> None:
    assert network.coordinator is not None
    consumer = "lost-job-consumer"
    key = network.create_key(consumer, credit_usd="5")
    token = network.create_provider_token("provider")
    network.spawn(
        "provider",
        "provider",
        "serve",
        "--coordinator",
        network.base_url,
        "--model",
        "default",
        "--data-dir",
        str(network.root / "provider"),
        env={"MOONFLOWER_PROVIDER_TOKEN": token},
    )
    started = workers(network.coordinator)
    wait_until(
        lambda: sum(max(0, providers_at(url)) for url in started) == 1,
        STARTUP_TIMEOUT_S,
        "the provider to connect",
    )
    holder = next(url for url in started if providers_at(url) == 1)
    survivor = next(url for url in started if url != holder)
    wait_until(lambda: chat(network, key, url=survivor).status_code == 200, 30, "a first answer")
    before = accounts(network)

    stream = Stream(network, key)  # wherever it lands, the job runs beside the provider
    wait_until(  # a tally that bills relayed output is written beside the job's lease
        lambda: any(h.status == "held" and billed(h.tally) for h in rows(network, Hold)),
        30,
        "a tally beside the running job's lease",
    )
    (lost,) = [h for h in rows(network, Hold) if h.status == "held"]
    assert stream.chunks > 0 and stream.ended is None
    os.kill(started[holder], signal.SIGKILL)

    stream.join(60)
    assert stream.ended is not None  # the stream ended with its replica
    wait_until(lambda: providers_at(survivor) == 1, 30, "the provider on the other worker")
    assert chat(network, key).status_code == 200
    wait_until(  # the lease ran out and a survivor swept
        lambda: next(h for h in rows(network, Hold) if h.job_id == lost.job_id).status != "held",
        10 * LEASE_S,
        "a survivor to settle the lost job",
    )

    holds = {h.job_id: h for h in rows(network, Hold)}
    jobs = {j.id: j for j in rows(network, Job)}
    assert holds[lost.job_id].status == "settled"
    assert all(h.status != "held" for h in holds.values())
    job = jobs[lost.job_id]
    assert job.error_code == "coordinator_lost" and job.billed_completion_tokens > 0
    after = accounts(network)
    spent = before[consumer].balance_micro_usd - after[consumer].balance_micro_usd
    later_jobs = [j for j in jobs.values() if j.created_at > job.created_at]
    assert spent == job.charged_micro_usd + sum(j.charged_micro_usd for j in later_jobs)
    assert after[consumer].held_micro_usd == 0
    assert sum(a.balance_micro_usd for a in after.values()) == 0
