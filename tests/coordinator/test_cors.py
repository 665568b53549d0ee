"""Browsers calling the real coordinator (uvicorn on loopback, a real provider agent with a
scripted engine): pre-flights from allowed and other origins, the public read-only routes
that answer every origin, CORS headers on answers (errors and streams included), the
request headers the official SDKs send, and the setting that lists allowed origins."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest
from pydantic import ValidationError

from moonflower.client.sealed import SEALED_CONTENT_TYPE
from moonflower.generation import GenerationEvent, GenerationRequest
from moonflower.settings import CoordinatorSettings
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import InProcessNetwork, inprocess_network

APP = "https://app.example"
OTHER = "https://elsewhere.example"

PRIVATE_ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/payments/balance"),
    ("GET", "/v1/payments/usage"),
    ("GET", "/v1/receipts/job-1"),
    ("PUT", "/v1/admin/pricing"),
]
PUBLIC_ROUTES = [
    "/v1/models",
    "/v1/models/fake-model",
    "/health",
    "/v1/pricing",
    "/v1/providers/attestation",
    "/v1/encryption-key",
]

BROWSER_SET = {"host", "connection", "content-length", "accept-encoding", "user-agent"}
"""Headers a browser sets itself (a page's script may not): never in a pre-flight's list."""

HELD = "held"


@dataclass
class PausingEngine(ScriptedEngine):
    """A scripted engine that pauses a job whose prompt is HELD after its first word, until
    the test sets `resume` (or the job is cancelled; it goes on alone after 30 s)."""

    resume: threading.Event = field(default_factory=threading.Event)

    def generate(
        self, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        events = super().generate(request, cancel)
        if request.messages[0].content != HELD:
            yield from events
            return
        yield next(events)  # started
        yield next(events)  # the first word
        deadline = time.monotonic() + 30
        while not (self.resume.wait(0.01) or cancel.is_set() or time.monotonic() > deadline):
            pass
        yield from events


@pytest.fixture
def engine() -> PausingEngine:
    return PausingEngine()


@pytest.fixture
async def net(tmp_path: Path, engine: PausingEngine) -> AsyncIterator[InProcessNetwork]:
    """A network whose coordinator lists APP (and one more) as allowed origins."""
    origins = [APP, "http://127.0.0.1:5173"]
    async with inprocess_network(tmp_path, [engine], cors_allowed_origins=origins) as network:
        yield network


@pytest.fixture
async def closed_net(tmp_path: Path) -> AsyncIterator[InProcessNetwork]:
    """A network with the default setting: no origin listed."""
    async with inprocess_network(tmp_path, [ScriptedEngine()]) as network:
        yield network


async def preflight(
    net: InProcessNetwork,
    path: str,
    *,
    origin: str = APP,
    method: str = "POST",
    headers: str = "authorization, content-type",
) -> httpx.Response:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        return await client.options(path, headers=request_headers)


def listed(response: httpx.Response, header: str) -> set[str]:
    return {name.strip().lower() for name in response.headers.get(header, "").split(",")}


def chat(content: str = "hi", **extra: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.parametrize(("method", "path"), PRIVATE_ROUTES)
async def test_a_preflight_from_an_allowed_origin_is_answered_before_auth(
    net: InProcessNetwork, method: str, path: str
) -> None:
    response = await preflight(net, path, method=method)
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "origin" in listed(response, "vary")
    assert method in {m.upper() for m in listed(response, "access-control-allow-methods")}
    assert {"authorization", "content-type"} <= listed(response, "access-control-allow-headers")
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers
    assert response.content == b""


async def test_every_header_the_official_sdks_send_is_allowed(net: InProcessNetwork) -> None:
    sent: dict[str, set[str]] = {}
    refusal = {"type": "error", "error": {"type": "invalid_request_error", "message": "x"}}

    def record_openai(request: httpx.Request) -> httpx.Response:
        sent["/v1/chat/completions"] = set(request.headers.keys())
        return httpx.Response(400, json=refusal)

    def record_anthropic(request: httpx2.Request) -> httpx2.Response:
        sent["/v1/messages"] = set(request.headers.keys())
        return httpx2.Response(400, json=refusal)

    # The OpenAI SDK rides on httpx, Anthropic's on httpx2.
    http = httpx.AsyncClient(transport=httpx.MockTransport(record_openai))
    http2 = httpx2.AsyncClient(transport=httpx2.MockTransport(record_anthropic))
    oai = openai.AsyncOpenAI(base_url=net.base_url, api_key="k", http_client=http, max_retries=0)
    ant = anthropic.AsyncAnthropic(
        base_url=net.base_url, api_key="k", http_client=http2, max_retries=0
    )
    async with oai, ant:
        with pytest.raises(openai.BadRequestError):
            await oai.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(anthropic.BadRequestError):
            await ant.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert set(sent) == {"/v1/chat/completions", "/v1/messages"}
    for path, names in sent.items():
        asked = sorted(names - BROWSER_SET)
        assert any(name.startswith("x-stainless-") for name in asked)
        response = await preflight(net, path, headers=", ".join(asked))
        assert response.status_code == 204, response.text
        assert set(asked) <= listed(response, "access-control-allow-headers")


async def test_the_anthropic_browser_opt_in_and_moonflower_headers_are_allowed(
    net: InProcessNetwork,
) -> None:
    names = [
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "content-type",
        "x-stainless-helper-method",
        "idempotency-key",
        "openai-organization",
        "openai-project",
        "x-moonflower-min-trust",
    ]
    response = await preflight(net, "/v1/messages", headers=", ".join(names))
    assert response.status_code == 204, response.text
    assert set(names) <= listed(response, "access-control-allow-headers")


async def test_a_preflight_from_another_origin_is_refused(net: InProcessNetwork) -> None:
    response = await preflight(net, "/v1/chat/completions", origin=OTHER)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    error = response.json()["error"]
    assert OTHER in error["message"] and "not allowed" in error["message"]
    assert error["code"] == "permission_denied"

    anthropic_route = await preflight(net, "/v1/messages", origin=OTHER)
    assert anthropic_route.status_code == 403
    assert anthropic_route.json()["error"]["type"] == "permission_error"
    assert "access-control-allow-origin" not in anthropic_route.headers


async def test_a_preflight_asking_for_an_unknown_header_is_refused(net: InProcessNetwork) -> None:
    response = await preflight(net, "/v1/chat/completions", headers="authorization, x-custom")
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert "x-custom" in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path"), PRIVATE_ROUTES)
async def test_by_default_no_origin_may_call_a_private_route(
    closed_net: InProcessNetwork, method: str, path: str
) -> None:
    response = await preflight(closed_net, path, method=method)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", PUBLIC_ROUTES)
async def test_public_read_only_routes_answer_every_origin(
    closed_net: InProcessNetwork, path: str
) -> None:
    response = await preflight(
        closed_net, path, origin=OTHER, method="GET", headers="authorization, anthropic-version"
    )
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    assert "GET" in {m.upper() for m in listed(response, "access-control-allow-methods")}
    assert "authorization" in listed(response, "access-control-allow-headers")

    async with httpx.AsyncClient(base_url=closed_net.base_url) as client:
        got = await client.get(path, headers={"Origin": OTHER, **closed_net.headers})
    assert got.status_code == 200, got.text
    assert got.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in got.headers


async def test_a_public_path_is_private_for_other_methods(closed_net: InProcessNetwork) -> None:
    response = await preflight(closed_net, "/v1/models", origin=OTHER, method="POST")
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


async def test_an_answer_to_an_allowed_origin_exposes_the_headers_a_web_app_reads(
    net: InProcessNetwork,
) -> None:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        response = await client.post(
            "/v1/chat/completions", json=chat(), headers={"Origin": APP, **net.headers}
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "origin" in listed(response, "vary")
    exposed = listed(response, "access-control-expose-headers")
    set_by_the_coordinator = {name for name in response.headers if name.startswith("x-")}
    assert {"x-provider-id", "x-moonflower-job-id", "x-se-signature"} <= set_by_the_coordinator
    assert set_by_the_coordinator <= exposed
    assert {"x-provider-chip", "x-provider-serial", "retry-after"} <= exposed
    assert "access-control-allow-credentials" not in response.headers


async def test_errors_to_an_allowed_origin_carry_cors_headers(net: InProcessNetwork) -> None:
    bad_key = {"Origin": APP, "Authorization": "Bearer mf-not-a-key"}
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        plain = await client.post("/v1/chat/completions", json=chat(), headers=bad_key)
        sealed = await client.post(
            "/v1/chat/completions",
            content=b"{}",
            headers={**bad_key, "Content-Type": SEALED_CONTENT_TYPE},
        )
        unknown = await client.get("/v1/nothing-here", headers=bad_key)
    for response, status in ((plain, 401), (sealed, 401), (unknown, 404)):
        assert response.status_code == status, response.text
        assert response.headers["access-control-allow-origin"] == APP
        assert "retry-after" in listed(response, "access-control-expose-headers")
        assert "error" in response.json()


async def test_answers_to_other_origins_carry_no_cors_headers(net: InProcessNetwork) -> None:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        refused = await client.post(
            "/v1/chat/completions",
            json=chat(),
            headers={"Origin": OTHER, "Authorization": "Bearer mf-not-a-key"},
        )
        served = await client.post(
            "/v1/chat/completions", json=chat(), headers={"Origin": OTHER, **net.headers}
        )
    assert (refused.status_code, served.status_code) == (401, 200)
    for response in (refused, served):
        assert not any(name.startswith("access-control-") for name in response.headers)


async def test_a_stream_to_an_allowed_origin_flows_as_it_is_made(
    net: InProcessNetwork, engine: PausingEngine
) -> None:
    received = ""
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        async with asyncio.timeout(10):  # the engine holds the rest back for longer
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json=chat(HELD, stream=True),
                headers={"Origin": APP, **net.headers},
            ) as response:
                assert response.status_code == 200
                assert response.headers["access-control-allow-origin"] == APP
                assert response.headers["content-type"].startswith("text/event-stream")
                chunks = response.aiter_text()
                while '"one"' not in received:
                    received += await anext(chunks)
                assert "two" not in received  # the engine is paused after its first word
                engine.resume.set()
                async for chunk in chunks:
                    received += chunk
    assert "two" in received and "[DONE]" in received


def test_any_origin_is_refused_as_a_setting() -> None:
    for origins in (["*"], [APP, "*"], "*", f"{APP},*"):
        with pytest.raises(ValidationError, match="public read-only routes"):
            CoordinatorSettings(cors_allowed_origins=origins)


def test_origins_are_read_comma_separated_or_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOONFLOWER_CORS_ALLOWED_ORIGINS", "https://App.example/, http://a:8080")
    assert CoordinatorSettings().cors_allowed_origins == [APP, "http://a:8080"]
    monkeypatch.setenv("MOONFLOWER_CORS_ALLOWED_ORIGINS", f'["{APP}"]')
    assert CoordinatorSettings().cors_allowed_origins == [APP]
    monkeypatch.delenv("MOONFLOWER_CORS_ALLOWED_ORIGINS")
    assert CoordinatorSettings().cors_allowed_origins == []


@pytest.mark.parametrize("origin", ["https://app.example/path", "null", "app.example", "ftp://x"])
def test_an_origin_must_be_scheme_host_and_port(origin: str) -> None:
    with pytest.raises(ValidationError, match="not a web origin"):
        CoordinatorSettings(cors_allowed_origins=[origin])
