"""`/metrics` and the access log, with the real app on a loopback socket and scripted
providers (the counting is under test here; the real model's counts are checked in
tests/integration/test_metrics_live.py).

Known traffic moves each counter by exactly its amount; the request id is taken or made and
always returned; the access log names the route, status, account and job, and never the
prompt, the answer or the key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moonflower.coordinator.access import is_sane_request_id
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import InProcessNetwork, inprocess_network

SECRET_PROMPT = "the-prompt-marker-5b1e"
SCRIPT = "alpha beta gamma delta"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def chat(client: httpx.AsyncClient, net: InProcessNetwork, **extra: object) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        headers=net.headers,
        json={
            "model": "fake-model",
            "messages": [{"role": "user", "content": SECRET_PROMPT}],
            **extra,
        },
    )


async def test_counters_move_by_exactly_the_traffic(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine(script=SCRIPT)]) as net,
        httpx.AsyncClient(base_url=net.base_url, timeout=30) as client,
    ):
        before = await scrape(client)
        completions = 0
        for _ in range(3):
            answer = await chat(client, net)
            assert answer.status_code == 200
            completions += answer.json()["usage"]["completion_tokens"]
        streamed = await chat(client, net, stream=True, stream_options={"include_usage": True})
        assert streamed.status_code == 200
        unknown = await chat(client, net, model="no-such-model")
        assert unknown.status_code == 404
        assert (await client.get("/v1/nothing/here")).status_code == 404
        after = await scrape(client)

    route = "/v1/chat/completions"

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("moonflower_http_requests_total", route=route, method="POST", status="200") == 4
    assert moved("moonflower_http_requests_total", route=route, method="POST", status="404") == 1
    assert (
        moved("moonflower_http_requests_total", route="unmatched", method="GET", status="404") == 1
    )
    assert moved("moonflower_http_request_duration_seconds_count", route=route, method="POST") == 5
    assert moved("moonflower_jobs_total", model="fake-model", outcome="completed") == 4
    per_job = len(SCRIPT.split())
    assert completions == 3 * per_job
    assert moved("moonflower_completion_tokens_total", model="fake-model") == 4 * per_job
    assert moved("moonflower_prompt_tokens_total", model="fake-model") == 4 * 1
    assert moved("moonflower_time_to_first_token_seconds_count", model="fake-model") == 4
    assert moved("moonflower_inter_token_latency_seconds_count", model="fake-model") == 4
    assert moved("moonflower_settlements_total") == 4
    assert moved("moonflower_settlement_failures_total") == 0
    assert moved("moonflower_database_statement_duration_seconds_count") > 0
    assert value(after, "moonflower_providers", model="fake-model", trust_level="self_signed") == 1
    assert value(after, "moonflower_open_holds") == 0
    assert SECRET_PROMPT not in after
    assert net.key not in after


async def test_the_request_id_is_taken_or_made_and_always_returned(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine(script=SCRIPT)]) as net,
        httpx.AsyncClient(base_url=net.base_url, timeout=30) as client,
    ):
        given = await client.get("/health", headers={"X-Request-ID": "req-abc.123"})
        assert given.headers["x-request-id"] == "req-abc.123"
        made = await client.get("/health")
        assert is_sane_request_id(made.headers["x-request-id"])
        insane = await client.get("/health", headers={"X-Request-ID": "has spaces"})
        assert insane.headers["x-request-id"] != "has spaces"
        too_long = await client.get("/health", headers={"X-Request-ID": "x" * 129})
        assert len(too_long.headers["x-request-id"]) <= 128
        refused = await client.get("/v1/models", headers={"X-Request-ID": "on-an-error"})
        assert refused.status_code == 401
        assert refused.headers["x-request-id"] == "on-an-error"
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            headers={**net.headers, "X-Request-ID": "on-a-stream"},
            json={
                "model": "fake-model",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        ) as stream:
            assert stream.headers["x-request-id"] == "on-a-stream"
            await stream.aread()


@pytest.mark.parametrize("style", ["json", "text"])
async def test_the_access_log_says_who_and_how_never_what(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, style: str
) -> None:
    caplog.set_level(logging.INFO, logger="moonflower.access")
    async with (
        inprocess_network(tmp_path, [ScriptedEngine(script=SCRIPT)], access_log=style) as net,
        httpx.AsyncClient(base_url=net.base_url, timeout=30) as client,
    ):
        answer = await client.post(
            "/v1/chat/completions",
            headers={**net.headers, "X-Request-ID": "traced-1"},
            json={"model": "fake-model", "messages": [{"role": "user", "content": SECRET_PROMPT}]},
        )
        assert answer.status_code == 200
        job_id = answer.headers["x-moonflower-job-id"]
        account_id = (await client.get("/v1/payments/balance", headers=net.headers)).json()[
            "account_id"
        ]
    lines = [r.getMessage() for r in caplog.records if r.name == "moonflower.access"]
    traced = [line for line in lines if "traced-1" in line]
    assert len(traced) == 1
    if style == "json":
        fields = json.loads(traced[0])
        assert fields["request_id"] == "traced-1"
        assert (fields["method"], fields["route"], fields["status"]) == (
            "POST",
            "/v1/chat/completions",
            200,
        )
        assert fields["account_id"] == account_id
        assert fields["job_id"] == job_id
        assert fields["duration_ms"] > 0
    else:
        assert traced[0].startswith("POST /v1/chat/completions 200 ")
        assert f"account_id={account_id}" in traced[0]
        assert f"job_id={job_id}" in traced[0]
    everything = "\n".join(lines)
    for secret in (SECRET_PROMPT, net.key, "alpha beta"):
        assert secret not in everything
