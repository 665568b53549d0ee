"""A consumer that hangs up stops the generation on the provider — asserted from the
provider's own account of the job. Real processes, real model."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import httpx
import pytest

from tests.support.network import LocalNetwork, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
LONG_ASK = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
    "max_tokens": 2000,
    "temperature": 0.8,
    "seed": 3,
}


def provider_outcome(network: LocalNetwork, job_id: str) -> tuple[str, int]:
    """The provider's log line for the job: (reason, completion tokens generated)."""
    provider = next(p for p in network.processes if p.name == "provider")
    pattern = rf"job {job_id} ended: reason=(\w+) prompt_tokens=\d+ completion_tokens=(\d+)"
    found: list[tuple[str, int]] = []

    def ended() -> bool:
        match = re.search(pattern, provider.log())
        if match:
            found.append((match.group(1), int(match.group(2))))
        return bool(match)

    wait_until(ended, 30, f"the provider to end job {job_id}")
    return found[0]


def hang_up_once_sent(network: LocalNetwork, api_key: str, body: dict[str, Any]) -> str:
    """Ask for a whole chat completion on a raw connection and close it as soon as the
    coordinator has sent the job to a provider; the job's id."""
    assert network.coordinator is not None
    coordinator = network.coordinator
    sent = re.compile(r"job (\w+) sent to provider")
    before = set(sent.findall(coordinator.log()))
    payload = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{network.port}\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    new: set[str] = set()

    def is_sent() -> bool:
        new.update(set(sent.findall(coordinator.log())) - before)
        return bool(new)

    with socket.create_connection(("127.0.0.1", network.port), timeout=30) as connection:
        connection.sendall(head + payload)
        wait_until(is_sent, 60, "the job to be sent to the provider")
    (job_id,) = new
    return job_id


def test_hanging_up_mid_stream_stops_the_provider(network: LocalNetwork, api_key: str) -> None:
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{network.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json={**LONG_ASK, "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        job_id = response.headers["x-moonflower-job-id"]
        lines = response.iter_lines()
        received = [next(lines) for _ in range(10)]
        assert all(line.startswith("data: ") or line == "" for line in received)
    reason, generated = provider_outcome(network, job_id)
    assert reason == "cancelled"
    assert generated < 2000


def test_hanging_up_on_a_whole_response_stops_the_provider(
    network: LocalNetwork, api_key: str
) -> None:
    job_id = hang_up_once_sent(network, api_key, LONG_ASK)
    provider = next(p for p in network.processes if p.name == "provider")
    wait_until(
        lambda: f"job {job_id}: cancel received" in provider.log(), 30, "the cancel to arrive"
    )
    reason, generated = provider_outcome(network, job_id)
    assert reason == "cancelled"
    assert generated < 2000
