"""Graceful restarts with real processes and the real model: SIGTERM lets requests in flight
finish, refuses new ones, and the network heals when the process comes back."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.network import LocalNetwork, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
    "max_tokens": 300,
    "stream": True,
}


def read_stream(base_url: str, key: str, out: dict[str, Any]) -> None:
    """Stream LONG, recording the chunks and whether the stream ended properly."""
    chunks: list[dict[str, Any]] = []
    out["chunks"] = chunks
    with httpx.stream(
        "POST",
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=LONG,
        timeout=120,
    ) as response:
        out["status"] = response.status_code
        for line in response.iter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: {"):
                chunks.append(json.loads(line.removeprefix("data: ")))


def test_sigterm_finishes_streams_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    network = LocalNetwork(tmp_path)
    try:
        coordinator = network.start_coordinator()
        key = network.create_key()
        network.start_provider()
        wait_until(lambda: ask(network, key).status_code == 200, 60, "the provider to serve")

        out: dict[str, Any] = {}
        reader = threading.Thread(target=read_stream, args=(network.base_url, key, out))
        reader.start()
        wait_until(lambda: len(out.get("chunks", [])) >= 3, 30, "the stream to begin")
        coordinator.popen.send_signal(signal.SIGTERM)
        # It logs this in the same step that closes its listening socket.
        wait_until(
            lambda: "draining: no new connections" in coordinator.log(),
            10,
            "the coordinator to stop accepting",
        )
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            ask(network, key)
        reader.join(timeout=120)
        assert out.get("done") is True  # the stream in flight ran to its end
        finishes = [c["choices"][0]["finish_reason"] for c in out["chunks"] if c["choices"]]
        assert finishes[-1] in ("stop", "length")
        assert not any("error" in c for c in out["chunks"])
        coordinator.popen.wait(timeout=30)

        network.start_coordinator()  # same port and data: the provider finds it again
        wait_until(lambda: network.provider_count() == 1, 30, "the provider to reconnect")
        # Nothing was lost: the job that finished during the drain is recorded and paid for.
        headers = {"Authorization": f"Bearer {key}"}
        usage = httpx.get(f"{network.base_url}/v1/payments/usage", headers=headers).json()
        streamed = usage["data"][0]
        assert streamed["status"] == "completed"
        assert streamed["cost_micro_usd"] > 0
        assert len(streamed["receipt_hash"]) == 64
        balance = httpx.get(f"{network.base_url}/v1/payments/balance", headers=headers).json()
        assert balance["held_micro_usd"] == 0
        assert balance["balance_micro_usd"] == 100_000_000 - sum(
            line["cost_micro_usd"] for line in usage["data"]
        )
        wait_until(lambda: ask(network, key).status_code == 200, 60, "the provider to serve")
    finally:
        network.stop()


def ask(network: LocalNetwork, key: str) -> httpx.Response:
    return httpx.post(
        f"{network.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )


def lists_model(network: LocalNetwork, key: str) -> bool:
    response = httpx.get(f"{network.base_url}/v1/models", headers={"x-api-key": key}, timeout=10)
    return any(m["id"] == MODEL for m in response.json()["data"])


def test_sigterm_on_a_provider_finishes_its_jobs_then_deregisters(tmp_path: Path) -> None:
    network = LocalNetwork(tmp_path)
    try:
        network.start_coordinator()
        key = network.create_key()
        leaving = network.start_provider("leaving")
        wait_until(lambda: ask(network, key).status_code == 200, 60, "the provider to serve")

        out: dict[str, Any] = {}
        reader = threading.Thread(target=read_stream, args=(network.base_url, key, out))
        reader.start()
        wait_until(lambda: len(out.get("chunks", [])) >= 3, 30, "the stream to begin")
        leaving.popen.send_signal(signal.SIGTERM)
        wait_until(
            lambda: "done" in out or not lists_model(network, key),
            30,
            "the coordinator to see the provider draining",
        )
        if "done" not in out:  # (unless the story already ended by itself)
            # Draining: still connected, but it takes no new job (nobody else serves it).
            assert network.provider_count() == 1
            assert ask(network, key).status_code == 503
        reader.join(timeout=120)
        assert out.get("done") is True  # its job in flight ran to the end
        assert not any("error" in c for c in out["chunks"])
        assert leaving.popen.wait(timeout=30) == 0
        wait_until(lambda: network.provider_count() == 0, 10, "the provider to deregister")
        assert "draining" in leaving.log()
    finally:
        network.stop()
