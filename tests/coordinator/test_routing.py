"""Routing, cancellation and failure handling through the real coordinator and real provider
agents over loopback, with scripted engines (these tests say nothing about inference)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from moonflower.ledger import jobs as job_ledger
from tests.support.fake_engine import GatedEngine, ScriptedEngine
from tests.support.inprocess import inprocess_network


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None


async def test_each_request_reaches_the_provider_serving_its_model(tmp_path: Path) -> None:
    alpha = ScriptedEngine(model_id="alpha", script="from alpha")
    beta = ScriptedEngine(model_id="beta", script="from beta")
    async with (
        inprocess_network(tmp_path, [alpha, beta]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        models = (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["alpha", "beta"]
        for model in ("alpha", "beta", "alpha"):
            body = (await client.post("/v1/chat/completions", json=chat(model))).json()
            assert body["choices"][0]["message"]["content"] == f"from {model}"
            assert body["model"] == model
    assert len(alpha.endings) == 2
    assert len(beta.endings) == 1


async def test_load_spreads_over_providers_of_the_same_model(tmp_path: Path) -> None:
    engines = [GatedEngine(model_id="m", script="x y z w") for _ in range(2)]
    async with (
        inprocess_network(tmp_path, engines) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        # Four at once on two providers of two slots, each routed while the ones before it
        # still run: a busy provider scores lower.
        try:
            asked = []
            for n in range(4):
                asked.append(
                    asyncio.create_task(client.post("/v1/chat/completions", json=chat("m")))
                )
                await until(lambda n=n: sum(len(e.requests) for e in engines) > n, f"job {n}")  # type: ignore[misc]
            for engine in engines:
                engine.release_all()
            statuses = [r.status_code for r in await asyncio.gather(*asked)]
        finally:
            for engine in engines:
                engine.release_all()
        assert statuses == [200] * 4
    assert [len(e.endings) for e in engines] == [2, 2]


async def test_client_disconnect_mid_stream_cancels_the_provider_job(tmp_path: Path) -> None:
    engine = ScriptedEngine(script=" ".join(["word"] * 500), token_delay_s=0.01)
    async with inprocess_network(tmp_path, [engine]) as net:
        async with (
            httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
            client.stream(
                "POST", "/v1/chat/completions", json=chat("fake-model", stream=True)
            ) as response,
        ):
            assert response.status_code == 200
            lines = response.aiter_lines()
            for _ in range(6):
                await anext(lines)
        async with asyncio.timeout(5):
            while not engine.endings:
                await asyncio.sleep(0.02)
        ending = engine.endings[0]
        assert ending.kind == "finished" and ending.reason == "cancelled"
        assert ending.usage.completion_tokens < 50
        async with asyncio.timeout(5):
            while not (recorded := await job_ledger.list_jobs(net.services.db)):
                await asyncio.sleep(0.02)
        assert recorded[0].status == "cancelled"


async def test_client_disconnect_before_a_whole_answer_cancels_the_job(tmp_path: Path) -> None:
    engine = ScriptedEngine(script=" ".join(["word"] * 500), token_delay_s=0.01)
    async with inprocess_network(tmp_path, [engine]) as net:
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            asking = asyncio.create_task(
                client.post("/v1/chat/completions", json=chat("fake-model"))
            )
            await until(lambda: engine.tokens_produced > 0, "the job to be generating")
            asking.cancel()  # the client hangs up
            with pytest.raises(asyncio.CancelledError):
                await asking
        async with asyncio.timeout(5):
            while not engine.endings:
                await asyncio.sleep(0.02)
        assert engine.endings[0].kind == "finished"
        assert engine.endings[0].reason == "cancelled"


async def test_provider_vanishing_mid_job_fails_the_request_cleanly(tmp_path: Path) -> None:
    engine = GatedEngine(script=" ".join(["word"] * 500))
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat("fake-model")))
        await until(lambda: bool(engine.requests), "the job to start")
        await net.stop_provider(net.agents[0])  # mid-job: the engine holds it until cancelled
        response = await request
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "server_error"
        # The model was served before, so it is unavailable now rather than unknown.
        response = await client.post("/v1/chat/completions", json=chat("fake-model"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_provider_available"
        response = await client.post("/v1/chat/completions", json=chat("never-served"))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"


async def test_provider_failure_before_start_maps_to_a_400(tmp_path: Path) -> None:
    engine = ScriptedEngine(context_length=4)
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        body = chat("fake-model")
        body["messages"] = [{"role": "user", "content": "a b c d e f"}]
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert response.json()["error"]["param"] == "messages"


async def test_missing_max_tokens_gets_the_default_bounded_by_the_context(tmp_path: Path) -> None:
    small = ScriptedEngine(model_id="small", context_length=512)
    large = ScriptedEngine(model_id="large", context_length=100_000)
    async with (
        inprocess_network(tmp_path, [small, large]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        for model in ("small", "large"):
            assert (await client.post("/v1/chat/completions", json=chat(model))).status_code == 200
        explicit = chat("large", max_completion_tokens=7, max_tokens=9)
        assert (await client.post("/v1/chat/completions", json=explicit)).status_code == 200
    assert small.requests[0].max_tokens == 512
    assert large.requests[0].max_tokens == 8192
    assert large.requests[1].max_tokens == 7


async def test_a_provider_that_never_starts_times_out_with_a_504(tmp_path: Path) -> None:
    engine = GatedEngine(holds_start=True, token_delay_s=0.01)  # starts only when cancelled
    async with inprocess_network(tmp_path, [engine], first_event_timeout_s=0.2) as net:
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            response = await client.post("/v1/chat/completions", json=chat("fake-model"))
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        async with asyncio.timeout(5):
            while not engine.endings:
                await asyncio.sleep(0.02)
        # The provider was told to stop: it ends the job at its first token check.
        assert engine.endings[0].kind == "finished"
        assert engine.endings[0].reason == "cancelled"
        recorded = await job_ledger.list_jobs(net.services.db)
        assert [(j.status, j.error_code) for j in recorded] == [("failed", "timeout")]


async def test_an_alias_serves_its_target_and_is_listed(tmp_path: Path) -> None:
    alpha = ScriptedEngine(model_id="alpha", script="from alpha")
    aliases = {"gpt-4o-mini": "alpha", "claude-haiku": "not-served"}
    async with (
        inprocess_network(tmp_path, [alpha], model_aliases=aliases) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        listed = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        assert set(listed) == {"alpha", "gpt-4o-mini"}
        assert listed["gpt-4o-mini"]["alias_of"] == "alpha"
        body = (await client.post("/v1/chat/completions", json=chat("gpt-4o-mini"))).json()
        assert body["model"] == "gpt-4o-mini"
        assert body["choices"][0]["message"]["content"] == "from alpha"
        response = await client.post("/v1/chat/completions", json=chat("claude-haiku"))
        assert response.status_code == 404
    assert [r.model for r in alpha.requests] == ["alpha"]
