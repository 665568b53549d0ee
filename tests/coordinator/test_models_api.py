"""The Models API in both dialects through the real coordinator and real provider agents
(scripted engines): OpenAI's shape by default, Anthropic's for a request carrying
Anthropic's headers; cursor paging both ways; each dialect's 404 and 400 bodies, checked
against the vendors' OpenAPI documents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import InProcessNetwork, inprocess_network
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai

MODELS = ("gamma", "alpha", "beta")
ALIASES = {"claude-alpha": "alpha", "gpt-unserved": "not-served"}


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[InProcessNetwork]:
    engines = [
        ScriptedEngine(model_id=model, context_length=512 * (n + 1))
        for n, model in enumerate(MODELS)
    ]
    async with inprocess_network(tmp_path, engines, model_aliases=ALIASES) as network:
        yield network


def openai_headers(net: InProcessNetwork) -> dict[str, str]:
    return {"Authorization": f"Bearer {net.key}"}


def anthropic_headers(net: InProcessNetwork) -> dict[str, str]:
    return {"x-api-key": net.key, "anthropic-version": "2023-06-01"}


async def get(
    net: InProcessNetwork, path: str, headers: dict[str, str], **params: str | int
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=net.base_url, headers=headers) as client:
        return await client.get(path, params=params)


def anthropic_page(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert_valid_anthropic("ListResponse_ModelInfo_", body)
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [entry["id"] for entry in body["data"]]


async def test_openai_callers_get_every_model_and_alias_in_openai_shape(
    net: InProcessNetwork,
) -> None:
    response = await get(net, "/v1/models", openai_headers(net))
    assert response.status_code == 200
    body = response.json()
    assert_valid_openai("ListModelsResponse", body)
    assert ids(body) == ["alpha", "beta", "claude-alpha", "gamma"]
    assert (body["has_more"], body["first_id"], body["last_id"]) == (False, "alpha", "gamma")
    listed = {entry["id"]: entry for entry in body["data"]}
    assert listed["claude-alpha"]["alias_of"] == "alpha"
    assert listed["beta"]["context_length"] == 512 * 3
    assert listed["alpha"]["providers"] == 1
    assert {entry["created"] for entry in body["data"]} == {net.services.started_at}

    model = await get(net, "/v1/models/claude-alpha", openai_headers(net))
    assert model.status_code == 200
    assert_valid_openai("Model", model.json())
    assert model.json() == listed["claude-alpha"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda key: {"x-api-key": key}, id="x-api-key"),
        pytest.param(
            lambda key: {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"},
            id="bearer-with-anthropic-version",
        ),
    ],
)
async def test_anthropic_callers_get_model_infos(net: InProcessNetwork, headers: Any) -> None:
    body = anthropic_page(await get(net, "/v1/models", headers(net.key)))
    assert ids(body) == ["alpha", "beta", "gamma"]  # models, not aliases
    assert (body["has_more"], body["first_id"], body["last_id"]) == (False, "alpha", "gamma")
    for entry in body["data"]:
        assert_valid_anthropic("ModelInfo", entry)
        assert entry["type"] == "model"
        assert entry["display_name"] == entry["id"]
        created = datetime.fromisoformat(entry["created_at"].replace("Z", "+00:00"))
        assert created == datetime.fromtimestamp(net.services.started_at, UTC)
    assert body["data"][1]["max_input_tokens"] == 512 * 3

    beta = await get(net, "/v1/models/beta", headers(net.key))
    assert beta.status_code == 200
    assert_valid_anthropic("ModelInfo", beta.json())
    assert beta.json() == body["data"][1]


async def test_anthropic_get_of_an_alias_answers_with_its_model(net: InProcessNetwork) -> None:
    response = await get(net, "/v1/models/claude-alpha", anthropic_headers(net))
    assert response.status_code == 200
    assert_valid_anthropic("ModelInfo", response.json())
    assert response.json()["id"] == "alpha"


async def test_anthropic_paging_walks_forward_one_at_a_time_then_back(
    net: InProcessNetwork,
) -> None:
    headers = anthropic_headers(net)
    seen: list[str] = []
    body = anthropic_page(await get(net, "/v1/models", headers, limit=1))
    pages = [body]
    while body["has_more"]:
        assert len(pages) <= len(MODELS), "paging never ended"
        body = anthropic_page(
            await get(net, "/v1/models", headers, limit=1, after_id=body["last_id"])
        )
        pages.append(body)
    for page in pages:
        assert len(page["data"]) == 1
        assert page["first_id"] == page["last_id"] == page["data"][0]["id"]
        seen += ids(page)
    assert seen == ["alpha", "beta", "gamma"]
    assert [page["has_more"] for page in pages] == [True, True, False]

    back = anthropic_page(await get(net, "/v1/models", headers, limit=1, before_id="gamma"))
    assert (ids(back), back["has_more"]) == (["beta"], True)
    back = anthropic_page(await get(net, "/v1/models", headers, limit=1, before_id="beta"))
    assert (ids(back), back["has_more"]) == (["alpha"], False)
    back = anthropic_page(await get(net, "/v1/models", headers, limit=5, before_id="gamma"))
    assert (ids(back), back["has_more"]) == (["alpha", "beta"], False)
    first = anthropic_page(await get(net, "/v1/models", headers, before_id="alpha"))
    assert (first["data"], first["first_id"], first["last_id"]) == ([], None, None)
    assert first["has_more"] is False
    last = anthropic_page(await get(net, "/v1/models", headers, limit=2, after_id="beta"))
    assert (ids(last), last["has_more"]) == (["gamma"], False)


async def test_openai_callers_may_page_too(net: InProcessNetwork) -> None:
    response = await get(net, "/v1/models", openai_headers(net), limit=2, after_id="alpha")
    assert response.status_code == 200
    body = response.json()
    assert_valid_openai("ListModelsResponse", body)
    assert ids(body) == ["beta", "claude-alpha"]
    assert (body["has_more"], body["first_id"], body["last_id"]) == (True, "beta", "claude-alpha")


async def test_an_unknown_model_is_a_404_in_each_dialect(net: InProcessNetwork) -> None:
    response = await get(net, "/v1/models/no-such-model", openai_headers(net))
    assert response.status_code == 404
    assert_valid_openai("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    assert "no-such-model" in error["message"]

    for path in ("/v1/models/no-such-model", "/v1/models/gpt-unserved"):
        response = await get(net, path, anthropic_headers(net))
        assert response.status_code == 404
        body = response.json()
        assert_valid_anthropic("ErrorResponse", body)
        assert body["type"] == "error"
        assert body["error"]["type"] == "not_found_error"
        assert body["request_id"].startswith("req_")


BAD_PAGING: list[dict[str, str | int]] = [
    {"limit": 0},
    {"limit": 5000},
    {"limit": -1},
    {"limit": "ten"},
    {"limit": ""},
    {"after_id": "no-such-model"},
    {"before_id": "no-such-model"},
    {"after_id": "alpha", "before_id": "gamma"},
]


@pytest.mark.parametrize(
    "params", BAD_PAGING, ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items())
)
async def test_bad_paging_is_a_400_in_each_dialect(
    net: InProcessNetwork, params: dict[str, str | int]
) -> None:
    response = await get(net, "/v1/models", openai_headers(net), **params)
    assert response.status_code == 400
    assert_valid_openai("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] in params

    response = await get(net, "/v1/models", anthropic_headers(net), **params)
    assert response.status_code == 400
    body = response.json()
    assert_valid_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "invalid_request_error"
    assert next(iter(params)) in body["error"]["message"]


async def test_an_alias_is_no_cursor_in_anthropic_shape(net: InProcessNetwork) -> None:
    response = await get(net, "/v1/models", anthropic_headers(net), after_id="claude-alpha")
    assert response.status_code == 400
    assert_valid_anthropic("ErrorResponse", response.json())


async def test_the_models_api_still_needs_a_key_and_says_so_in_the_callers_dialect(
    net: InProcessNetwork,
) -> None:
    response = await get(net, "/v1/models", {})
    assert response.status_code == 401
    assert_valid_openai("ErrorResponse", response.json())
    response = await get(net, "/v1/models/alpha", {"x-api-key": "mf-not-a-real-key"})
    assert response.status_code == 401
    assert_valid_anthropic("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "authentication_error"
    response = await get(net, "/v1/models", {"anthropic-version": "2023-06-01"})
    assert response.status_code == 401
    assert_valid_anthropic("ErrorResponse", response.json())


async def test_other_openai_routes_keep_openai_errors_for_an_x_api_key(
    net: InProcessNetwork,
) -> None:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        response = await client.post(
            "/v1/chat/completions", json={}, headers={"x-api-key": "mf-not-a-real-key"}
        )
    assert response.status_code == 401
    assert_valid_openai("ErrorResponse", response.json())


async def test_a_model_no_longer_served_leaves_the_list_and_is_no_cursor(
    net: InProcessNetwork,
) -> None:
    gamma = next(agent for agent in net.agents if agent.engine.card.id == "gamma")
    await net.stop_provider(gamma)
    async with asyncio.timeout(10):  # until the coordinator notices the socket closed
        while "gamma" in net.services.registry.models():
            await asyncio.sleep(0.005)
    body = anthropic_page(await get(net, "/v1/models", anthropic_headers(net)))
    assert ids(body) == ["alpha", "beta"]
    response = await get(net, "/v1/models", anthropic_headers(net), after_id="gamma")
    assert response.status_code == 400
    assert_valid_anthropic("ErrorResponse", response.json())
