"""`/metrics` of a real coordinator serving the real model: Prometheus's own checker accepts
it, and after known traffic through the official SDK its token and job counters equal what
the SDK was told."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import openai

from moonflower.coordinator.metrics import CONTENT_TYPE
from tests.coordinator.test_metrics import value
from tests.support.network import LocalNetwork

MODEL = "smollm2-135m-instruct"


def scrape(network: LocalNetwork) -> str:
    response = httpx.get(f"{network.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    return response.text


def test_metrics_pass_promtool_and_count_the_real_traffic(
    network: LocalNetwork, api_key: str
) -> None:
    before = scrape(network)
    client = openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=api_key)
    prompt = completion = 0
    for question in ("Name a colour.", "Count to three."):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=12
        )
        assert answer.usage is not None
        prompt += answer.usage.prompt_tokens
        completion += answer.usage.completion_tokens
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            prompt += chunk.usage.prompt_tokens
            completion += chunk.usage.completion_tokens
    after = scrape(network)

    promtool = shutil.which("promtool")
    assert promtool is not None, "scripts/install-servers installs Debian's prometheus"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=after.encode(), capture_output=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("moonflower_prompt_tokens_total", model=MODEL) == prompt
    assert moved("moonflower_completion_tokens_total", model=MODEL) == completion
    assert moved("moonflower_jobs_total", model=MODEL, outcome="completed") == 3
    route = "/v1/chat/completions"
    assert moved("moonflower_http_requests_total", route=route, method="POST", status="200") == 3
    assert moved("moonflower_time_to_first_token_seconds_count", model=MODEL) == 3
    assert value(after, "moonflower_providers", model=MODEL, trust_level="self_signed") == 1
