"""The inference routes are built from their dialect objects, and an error raised in one is
rendered in that route's own dialect — whatever its URL says — while a route without a
dialect keeps the URL and header rule (`caller_dialect`)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from moonflower.coordinator.app import install_error_handlers
from moonflower.coordinator.dialects import inference_apis
from moonflower.coordinator.routes import inference
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai


def app_serving(path: str) -> FastAPI:
    """Anthropic's Messages route, and OpenAI's chat route, both moved under `path`."""
    app = FastAPI()
    install_error_handlers(app)
    moved = [
        dataclasses.replace(inference_apis.MESSAGES, path=f"{path}/messages", name="messages"),
        dataclasses.replace(inference_apis.CHAT, path=f"{path}/chat", name="chat"),
    ]
    app.include_router(inference.routes_for(moved))
    app.state.services = SimpleNamespace(callers=None)  # not asked: no key is presented
    return app


async def post(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, json={})


async def test_a_refused_key_is_rendered_in_the_routes_own_dialect() -> None:
    app = app_serving("/elsewhere")
    anthropic = await post(app, "/elsewhere/messages")
    assert anthropic.status_code == 401
    body = anthropic.json()
    assert_valid_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "authentication_error"
    assert body["request_id"].startswith("req_")
    openai = await post(app, "/elsewhere/chat")
    assert openai.status_code == 401
    assert_valid_openai("ErrorResponse", openai.json())


async def test_a_route_under_anthropics_url_still_speaks_its_own_dialect() -> None:
    response = await post(app_serving("/v1/messages"), "/v1/messages/chat")
    assert response.status_code == 401
    assert_valid_openai("ErrorResponse", response.json())


def test_the_factory_builds_one_route_per_dialect() -> None:
    routes = inference.routes_for(inference_apis.ALL).routes
    assert [route.path for route in routes] == [  # type: ignore[attr-defined]
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
    ]
