"""`moonflower coordinator serve --workers 2` as real processes, on PostgreSQL and Redis,
with the real model's provider: consumers reaching either worker through the one port are
served, and when the worker holding the provider is killed (SIGKILL), the provider serves
again through the other within seconds, new requests succeed, and the dead worker is
started again."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.support.cluster import redis_url_for_cluster
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, Process, wait_until
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

MODEL = "smollm2-135m-instruct"
REPLICA_LINE = re.compile(r"serving as replica (http://\S+) \(pid (\d+)\)")


@pytest.fixture(scope="module")
def network(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("workers"),
        database_url=postgres_server.create_database(),
        log_level="info",
        settings={"REDIS_URL": redis_url_for_cluster(redis_server)},
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
        wait_until(network.is_healthy, STARTUP_TIMEOUT_S, "the port to answer")
        yield network
    finally:
        network.stop()


def workers(process: Process) -> dict[str, int]:
    """Each worker started so far (its own URL → pid), the latest start of each URL."""
    return {url: int(pid) for url, pid in REPLICA_LINE.findall(process.log())}


def providers_at(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/health", timeout=2).json()["providers"])
    except httpx.HTTPError:
        return -1


def chat(network: LocalNetwork, key: str, *, url: str | None = None) -> httpx.Response:
    """A chat completion at `url`, by default the shared port: each call opens a new
    connection there, which either worker may accept."""
    with httpx.Client(timeout=120) as client:
        return client.post(
            f"{url or network.base_url}/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 4,
                "temperature": 0,
            },
            headers={"Authorization": f"Bearer {key}"},
        )


def test_workers_share_one_port_and_survive_losing_one(network: LocalNetwork) -> None:
    assert network.coordinator is not None
    key = network.create_key()
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
        "the provider to connect to a worker",
    )
    holder = next(url for url in started if providers_at(url) == 1)
    other = next(url for url in started if url != holder)
    wait_until(  # its offer published, the provider's first challenge passed
        lambda: chat(network, key, url=other).status_code == 200,
        30,
        "the worker without the provider to hand it requests",
    )
    answers = [chat(network, key) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]

    holder = next(url for url in started if providers_at(url) == 1)
    survivor = next(url for url in started if url != holder)
    os.kill(started[holder], signal.SIGKILL)  # the worker only: the parent stays
    wait_until(lambda: providers_at(survivor) == 1, 30, "the provider on the other worker")
    answers = [chat(network, key) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    wait_until(
        lambda: len(workers(network.coordinator)) == 3,  # type: ignore[arg-type]
        STARTUP_TIMEOUT_S,
        "the killed worker to be started again",
    )
    assert network.coordinator.is_running
