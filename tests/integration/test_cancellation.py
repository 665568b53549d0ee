"""A consumer that hangs up stops the generation on the provider — asserted from the
provider's own account of the job. Real processes, real model."""

from __future__ import annotations

import re

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
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{network.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json=LONG_ASK,
            timeout=httpx.Timeout(60, read=1.0),
        )
    provider = next(p for p in network.processes if p.name == "provider")
    wait_until(lambda: "cancel received" in provider.log(), 30, "the cancel to arrive")
    job_id = re.findall(r"job (\w+): cancel received", provider.log())[-1]
    reason, generated = provider_outcome(network, job_id)
    assert reason == "cancelled"
    assert generated < 2000
