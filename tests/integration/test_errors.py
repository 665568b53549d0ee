"""Every kind of bad input gets a 4xx in OpenAI's error shape naming the field — never a 5xx —
through real processes and the real model."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
OK_MESSAGES = [{"role": "user", "content": "Say hi."}]


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 4}
    for name, value in fields.items():
        if value is ...:
            base.pop(name)
        else:
            base[name] = value
    return base


BAD_BODIES = [
    pytest.param(body(model=...), "model", id="missing model"),
    pytest.param(body(messages=...), "messages", id="missing messages"),
    pytest.param(body(messages=[]), "messages", id="empty messages"),
    pytest.param(body(model=""), "model", id="empty model"),
    pytest.param(body(model=42), "model", id="model not a string"),
    pytest.param(body(messages="hi"), "messages", id="messages not a list"),
    pytest.param(body(messages=["hi"]), "messages[0]", id="message not an object"),
    pytest.param(
        body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", id="unknown role"
    ),
    pytest.param(body(messages=[{"content": "x"}]), "messages[0].role", id="missing role"),
    pytest.param(
        body(messages=[{"role": "user", "content": 42}]),
        "messages[0].content",
        id="content not text",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0].type",
        id="unsupported content part",
    ),
    pytest.param(body(temperature=2.5), "temperature", id="temperature too high"),
    pytest.param(body(temperature=-0.1), "temperature", id="temperature negative"),
    pytest.param(body(temperature="hot"), "temperature", id="temperature not a number"),
    pytest.param(body(top_p=1.5), "top_p", id="top_p too high"),
    pytest.param(body(max_tokens=0), "max_tokens", id="max_tokens zero"),
    pytest.param(body(max_tokens=-3), "max_tokens", id="max_tokens negative"),
    pytest.param(body(max_tokens="ten"), "max_tokens", id="max_tokens not an integer"),
    pytest.param(body(max_tokens=2.5), "max_tokens", id="max_tokens fractional"),
    pytest.param(
        body(max_completion_tokens=0), "max_completion_tokens", id="max_completion_tokens zero"
    ),
    pytest.param(body(n=2), "n", id="n above one"),
    pytest.param(body(n=0), "n", id="n zero"),
    pytest.param(body(stop=42), "stop", id="stop not text"),
    pytest.param(body(stop=["a", "b", "c", "d", "e"]), "stop", id="too many stops"),
    pytest.param(body(presence_penalty=2.5), "presence_penalty", id="presence_penalty range"),
    pytest.param(body(frequency_penalty=-2.5), "frequency_penalty", id="frequency_penalty range"),
    pytest.param(body(seed="x"), "seed", id="seed not an integer"),
    pytest.param(body(stream="yes"), "stream", id="stream not a boolean"),
    pytest.param(
        body(stream_options={"include_usage": True}),
        "stream_options",
        id="stream_options without stream",
    ),
    pytest.param(body(user=5), "user", id="user not a string"),
]


@pytest.fixture(scope="module")
def http(network: LocalNetwork, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=network.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    )


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


@pytest.mark.parametrize(("payload", "param"), BAD_BODIES)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_bad_field_is_a_400_naming_it(
    http: httpx.Client, payload: dict[str, Any], param: str, stream: bool
) -> None:
    if stream and "stream" not in payload and "stream_options" not in payload:
        payload = {**payload, "stream": True}
    error = assert_openai_error(http.post("/v1/chat/completions", json=payload), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize(
    "raw", [b'{"model": ', b"", b"not json", b"[1, 2]", b'"a string"', b"null"]
)
def test_body_that_is_not_a_json_object_is_a_400(http: httpx.Client, raw: bytes) -> None:
    response = http.post(
        "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"


def test_body_over_the_size_limit_is_a_413(http: httpx.Client) -> None:
    huge = body(messages=[{"role": "user", "content": "x" * (9 * 1024 * 1024)}])
    error = assert_openai_error(http.post("/v1/chat/completions", json=huge), 413)
    assert error["code"] == "request_too_large"


def test_prompt_longer_than_the_context_is_a_400(http: httpx.Client) -> None:
    long_prompt = "lighthouse " * 9000
    for stream in (False, True):
        response = http.post(
            "/v1/chat/completions",
            json=body(messages=[{"role": "user", "content": long_prompt}], stream=stream),
        )
        error = assert_openai_error(response, 400)
        assert error["code"] == "context_length_exceeded"
        assert error["param"] == "messages"
        assert "8192" in error["message"]


def test_unknown_fields_are_ignored(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json=body(logit_bias_v9={"1": 2}, metadata={"a": "b"})
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def test_missing_or_unknown_key_is_a_401(network: LocalNetwork, api_key: str) -> None:
    url = f"{network.base_url}/v1/chat/completions"
    for headers in (
        {},
        {"Authorization": "Bearer mf-not-a-real-key"},
        {"x-api-key": "mf-not-a-real-key"},
        {"Authorization": f"Basic {api_key}"},
    ):
        error = assert_openai_error(httpx.post(url, json=body(), headers=headers), 401)
        assert error["code"] == "invalid_api_key"
    models = f"{network.base_url}/v1/models"
    assert_openai_error(httpx.get(models), 401)
    assert httpx.get(models, headers={"x-api-key": api_key}).status_code == 200
    assert httpx.get(models, headers={"Authorization": f"Bearer {api_key}"}).status_code == 200


def test_revoked_key_is_a_401(network: LocalNetwork) -> None:
    import subprocess
    import sys

    key = network.create_key(account="revoked")
    url = f"{network.base_url}/v1/models"
    headers = {"Authorization": f"Bearer {key}"}  # OpenAI's dialect (`x-api-key`: Anthropic's)
    assert httpx.get(url, headers=headers).status_code == 200
    subprocess.run(
        [sys.executable, "-m", "moonflower", "keys", "revoke", key[:11], *network.db_args()],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # The coordinator remembers a key's caller for `api_key_cache_s` (5 s by default).
    deadline = time.monotonic() + 5 + 10
    while (response := httpx.get(url, headers=headers)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key kept working past the cache time"
        time.sleep(0.25)
    assert_openai_error(response, 401)


def test_unknown_route_and_unknown_model_are_404s(http: httpx.Client) -> None:
    for method, path in (
        ("GET", "/v1/nothing-here"),
        ("POST", "/v1/chat/nothing"),
        ("DELETE", "/v1/models/x/y"),
    ):
        error = assert_openai_error(http.request(method, path), 404)
        assert error["type"] == "invalid_request_error"
    error = assert_openai_error(
        http.post("/v1/chat/completions", json=body(model="no-such-model")), 404
    )
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


def test_health_is_public(network: LocalNetwork) -> None:
    health = httpx.get(f"{network.base_url}/health").json()
    assert health["status"] == "ok"
    assert health["providers"] == 1
