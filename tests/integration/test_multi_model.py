"""Two providers with different real models: both listed, each request reaches its own."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(tmp_path_factory.mktemp("two-models"))
    try:
        network.start_coordinator()
        network.start_provider("smollm", "default")
        network.start_provider("gemma", "gemma3-270m")
        yield network
    finally:
        network.stop()


def test_models_lists_both_and_requests_reach_their_own_provider(
    two_models: LocalNetwork,
) -> None:
    key = two_models.create_key()
    client = openai.OpenAI(base_url=f"{two_models.base_url}/v1", api_key=key, max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == [
        "gemma-3-270m",
        "smollm2-135m-instruct",
    ]
    served_by: dict[str, list[str]] = {"smollm": [], "gemma": []}
    for model, name in (
        ("gemma-3-270m", "gemma"),
        ("smollm2-135m-instruct", "smollm"),
        ("gemma-3-270m", "gemma"),
    ):
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            temperature=0,
        )
        completion = raw.parse()
        assert completion.model == model
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        served_by[name].append(raw.headers["x-moonflower-job-id"])
    logs = {p.name: p.log() for p in two_models.processes}
    for name, job_ids in served_by.items():
        other = "gemma" if name == "smollm" else "smollm"
        for job_id in job_ids:
            assert f"job {job_id} ended" in logs[name]
            assert job_id not in logs[other]
    health = httpx.get(f"{two_models.base_url}/health").json()
    assert health["providers"] == 2
