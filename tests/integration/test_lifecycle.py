"""Providers and coordinators come and go; the network heals by itself. Real processes,
real model."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.support.network import LocalNetwork, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def ask(network: LocalNetwork, key: str) -> httpx.Response:
    return httpx.post(
        f"{network.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8},
        timeout=60,
    )


def serving(network: LocalNetwork, key: str) -> bool:
    """Whether a provider is registered and past its first challenge (listed in models)."""
    response = httpx.get(f"{network.base_url}/v1/models", headers={"x-api-key": key}, timeout=10)
    return bool(response.json()["data"])


def test_killed_provider_gives_503_then_a_new_one_serves(tmp_path: Path) -> None:
    network = LocalNetwork(tmp_path)
    try:
        network.start_coordinator()
        key = network.create_key()
        provider = network.start_provider("provider-1")
        wait_until(lambda: serving(network, key), 30, "the provider to pass its challenge")
        assert ask(network, key).status_code == 200

        provider.stop(signal.SIGKILL)
        wait_until(lambda: network.provider_count() == 0, 30, "the coordinator to drop it")
        response = ask(network, key)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_provider_available"
        models = httpx.get(
            f"{network.base_url}/v1/models", headers={"x-api-key": key}, timeout=10
        ).json()
        assert models["data"] == []

        network.start_provider("provider-2")

        def listed() -> bool:  # registered, and past its first challenge
            return bool(
                httpx.get(
                    f"{network.base_url}/v1/models", headers={"x-api-key": key}, timeout=10
                ).json()["data"]
            )

        wait_until(listed, 30, "the new provider to pass its first challenge")
        response = ask(network, key)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] > 0
    finally:
        network.stop()


def test_provider_reconnects_by_itself_when_the_coordinator_restarts(tmp_path: Path) -> None:
    network = LocalNetwork(tmp_path)
    try:
        coordinator = network.start_coordinator()
        key = network.create_key()
        provider = network.start_provider()
        wait_until(lambda: serving(network, key), 30, "the provider to pass its challenge")
        assert ask(network, key).status_code == 200

        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why.
        assert coordinator.stop() in (0, -signal.SIGTERM)
        assert "Finished server process" in coordinator.log()
        wait_until(lambda: "reconnecting" in provider.log(), 30, "the provider to notice")
        network.start_coordinator()
        wait_until(lambda: network.provider_count() == 1, 30, "the provider to reconnect")
        assert provider.is_running
        response = ask(network, key)
        assert response.status_code == 200
        assert provider.log().count("registered with") == 2
    finally:
        network.stop()
