"""A provider given several coordinator replicas, as real processes on loopback with the real
model: it serves through the first, and when that replica is killed it registers with the
other by itself and serves there within seconds."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, Process, free_port, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
FAILOVER_DEADLINE_S = 15.0
"""How long the provider may take to be listed by the surviving replica: a reconnect and a
first challenge, with no back-off in between."""


@dataclass
class Replicas:
    a: LocalNetwork
    b: LocalNetwork
    provider: Process
    api_key: str


def start_replica(net: LocalNetwork, name: str) -> None:
    process = net.spawn(name, "coordinator", "serve", "--port", str(net.port), *net.db_args())
    net.coordinator = process
    wait_until(
        lambda: net.is_healthy() or not process.is_running,
        STARTUP_TIMEOUT_S,
        f"{name} to answer /health",
    )
    assert process.is_running, process.log()[-3000:]


def lists_model(net: LocalNetwork, api_key: str) -> bool:
    """Whether `net` has a provider registered and past its first challenge."""
    try:
        response = httpx.get(f"{net.base_url}/v1/models", headers={"x-api-key": api_key}, timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and bool(response.json()["data"])


def ask(net: LocalNetwork, api_key: str) -> httpx.Response:
    return httpx.post(
        f"{net.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=60,
    )


def registrations(provider: Process) -> list[str]:
    """The coordinator URLs the provider registered with, in order."""
    return re.findall(r"registered with (\S+) as prov_\w+", provider.log())


@pytest.fixture
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("failover")
    a = LocalNetwork(root)
    b = LocalNetwork(root, port=free_port())  # the same root: one data dir, one ledger
    try:
        api_key = a.create_key()  # also migrates the ledger before either replica starts
        start_replica(a, "coordinator-a")
        start_replica(b, "coordinator-b")
        provider = a.spawn(
            "provider",
            "provider",
            "serve",
            "--coordinator",
            a.base_url,
            "--coordinator",
            b.base_url,
            "--data-dir",
            str(root / "provider"),
            env={"MOONFLOWER_PROVIDER_TOKEN": a.create_provider_token("provider")},
        )
        wait_until(
            lambda: lists_model(a, api_key) or not provider.is_running,
            STARTUP_TIMEOUT_S,
            "the provider to be listed by replica A",
        )
        assert provider.is_running, provider.log()[-3000:]
        yield Replicas(a, b, provider, api_key)
    finally:
        b.stop()
        a.stop()


def test_a_provider_whose_replica_is_killed_serves_through_another_within_seconds(
    replicas: Replicas,
) -> None:
    a, b = replicas.a, replicas.b
    assert registrations(replicas.provider) == [f"ws://127.0.0.1:{a.port}/ws/provider"]
    assert ask(a, replicas.api_key).status_code == 200
    assert not lists_model(b, replicas.api_key)

    assert a.coordinator is not None
    a.coordinator.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(
        lambda: lists_model(b, replicas.api_key),
        FAILOVER_DEADLINE_S,
        "replica B to list the provider",
    )
    listed_after = time.monotonic() - killed_at
    response = ask(b, replicas.api_key)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0
    assert registrations(replicas.provider)[-1] == f"ws://127.0.0.1:{b.port}/ws/provider"
    assert replicas.provider.is_running
    assert "reconnecting in" not in replicas.provider.log()  # no back-off: B was next
    print(f"listed by the surviving replica {listed_after:.2f}s after the kill")
