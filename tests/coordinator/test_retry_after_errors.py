"""Rate-limit, overload and database-trouble errors in each dialect: status, body (checked
against the vendors' OpenAPI documents), the Retry-After header, what the official SDKs make
of them, and the in-stream error for a provider that reports itself overloaded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anthropic
import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.app import install_error_handlers
from moonflower.coordinator.dialects import anthropic_errors, openai_errors
from moonflower.coordinator.services import json_response
from moonflower.generation import Failed
from tests.support.network import free_port
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def app_raising(*failures: errors.MoonflowerError) -> FastAPI:
    """An app with the coordinator's error handling whose inference routes raise `failures`
    in turn, then answer; `/v1/models` likewise."""
    app = FastAPI()
    install_error_handlers(app)
    queue = list(failures)

    async def route(request: Request) -> Response:
        if queue:
            raise queue.pop(0)
        return json_response({"object": "list", "data": []})

    for path in (CHAT, MESSAGES):
        app.add_api_route(path, route, methods=["POST"])
    app.add_api_route("/v1/models", route, methods=["GET"])
    return app


async def call(path: str, failure: errors.MoonflowerError) -> httpx.Response:
    transport = httpx.ASGITransport(app=app_raising(failure))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, json={})


@pytest.mark.parametrize("limit", ["requests", "tokens"])
async def test_openai_rate_limit_is_429_naming_the_limit(limit: errors.RateLimit) -> None:
    response = await call(CHAT, errors.RateLimited(retry_after_s=7, limit=limit, per_minute=60))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    body = response.json()
    assert_valid_openai("ErrorResponse", body)
    assert body["error"]["type"] == limit
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["param"] is None
    assert f"{limit} per minute" in body["error"]["message"]


async def test_openai_overload_is_429_server_is_overloaded() -> None:
    response = await call(CHAT, errors.Overloaded("All busy.", retry_after_s=12))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "12"
    body = response.json()
    assert_valid_openai("ErrorResponse", body)
    assert body["error"] == {
        "message": "All busy.",
        "type": "service_unavailable_error",
        "param": None,
        "code": "server_is_overloaded",
    }


async def test_anthropic_rate_limit_is_429_rate_limit_error() -> None:
    response = await call(MESSAGES, errors.RateLimited(retry_after_s=3, limit="tokens"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    body = response.json()
    assert_valid_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "rate_limit_error"
    assert body["request_id"].startswith("req_")


async def test_anthropic_overload_is_429_rate_limit_error() -> None:
    response = await call(MESSAGES, errors.Overloaded(retry_after_s=30))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    body = response.json()
    assert_valid_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "rate_limit_error"
    assert "30 s" in body["error"]["message"]


async def test_openai_store_trouble_is_503_with_retry_after() -> None:
    response = await call(CHAT, errors.StoreUnavailable(retry_after_s=2))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    body = response.json()
    assert_valid_openai("ErrorResponse", body)
    assert body["error"]["type"] == "service_unavailable_error"
    assert body["error"]["code"] == "store_unavailable"
    assert "2 s" in body["error"]["message"]


async def test_anthropic_store_trouble_is_529_overloaded_error() -> None:
    response = await call(MESSAGES, errors.StoreUnavailable(retry_after_s=2))
    assert response.status_code == 529
    assert response.headers["retry-after"] == "2"
    body = response.json()
    assert_valid_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "overloaded_error"


async def test_the_sdks_see_store_trouble_as_a_retryable_server_error() -> None:
    app = app_raising(
        errors.StoreUnavailable(retry_after_s=1), errors.StoreUnavailable(retry_after_s=1)
    )
    async with served(app) as base_url:
        oai = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as unavailable:
            await oai.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        await oai.close()
        ant = anthropic.AsyncAnthropic(base_url=base_url, api_key="k", max_retries=0)
        message = {"role": "user", "content": "x"}
        with pytest.raises(anthropic.OverloadedError) as overloaded:
            await ant.messages.create(model="m", max_tokens=1, messages=[message])  # type: ignore[list-item]
        await ant.close()
    assert unavailable.value.status_code == 503
    assert unavailable.value.response.headers["retry-after"] == "1"
    assert overloaded.value.status_code == 529


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
async def test_errors_without_a_retry_time_carry_no_retry_after(path: str) -> None:
    for failure in (errors.InvalidRequest("bad", param="x"), errors.NoProviderAvailable("m")):
        response = await call(path, failure)
        assert "retry-after" not in response.headers


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """`app` served by uvicorn on a loopback port, for the SDKs' own HTTP clients."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)


async def test_the_sdks_raise_their_own_rate_limit_and_overload_errors() -> None:
    app = app_raising(
        errors.RateLimited(retry_after_s=5, limit="requests"),
        errors.Overloaded(retry_after_s=6),
        errors.RateLimited(retry_after_s=7, limit="tokens"),
        errors.Overloaded(retry_after_s=8),
    )
    async with served(app) as base_url:
        oai = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError) as limited:
            await oai.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.RateLimitError) as busy:
            await oai.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        await oai.close()
        ant = anthropic.AsyncAnthropic(base_url=base_url, api_key="k", max_retries=0)
        message = {"role": "user", "content": "x"}
        with pytest.raises(anthropic.RateLimitError) as a_limited:
            await ant.messages.create(model="m", max_tokens=1, messages=[message])  # type: ignore[list-item]
        with pytest.raises(anthropic.RateLimitError) as a_busy:
            await ant.messages.create(model="m", max_tokens=1, messages=[message])  # type: ignore[list-item]
        await ant.close()
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.type == "requests"
    assert limited.value.response.headers["retry-after"] == "5"
    assert busy.value.status_code == 429
    assert busy.value.code == "server_is_overloaded"
    assert a_limited.value.response.headers["retry-after"] == "7"
    assert a_busy.value.status_code == 429
    assert a_busy.value.response.headers["retry-after"] == "8"


async def test_the_openai_sdk_waits_as_long_as_retry_after_says() -> None:
    app = app_raising(errors.RateLimited(retry_after_s=1, limit="requests"))
    async with served(app) as base_url:
        oai = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=1)
        started = time.monotonic()
        page = await oai.models.list()
        waited = time.monotonic() - started
        await oai.close()
    assert page.data == []
    assert 1.0 <= waited < 5.0


def test_a_provider_at_capacity_is_an_overload_with_a_retry_time() -> None:
    failure = Failed(code="overloaded", message="The provider is at capacity.")
    error = errors.from_failure(failure)
    assert isinstance(error, errors.Overloaded)
    assert error.retry_after_s == errors.PROVIDER_BUSY_RETRY_AFTER_S >= 1
    assert error.message == "The provider is at capacity."


def test_a_provider_at_capacity_mid_stream_is_an_overload_event_in_each_dialect() -> None:
    failure = Failed(code="overloaded", message="The provider is at capacity.")
    openai_event = openai_errors.stream_error(failure)
    assert_valid_openai("ErrorResponse", openai_event)
    assert openai_event["error"]["type"] == "service_unavailable_error"
    assert openai_event["error"]["code"] == "server_is_overloaded"
    anthropic_event = anthropic_errors.stream_error(failure)
    assert_valid_anthropic("ErrorResponse", anthropic_event)
    assert anthropic_event["error"] == {
        "type": "overloaded_error",
        "message": "The provider is at capacity.",
    }
