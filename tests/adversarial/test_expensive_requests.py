"""Requests made to be expensive: a hostile consumer over real HTTP against a real coordinator
process, with scripted providers (which count every job they are sent) or real providers
running the real model (grammar compilation lives in the llama.cpp engine).

Stop sequences by the hundred thousand and schemas too deep or too large are refused by the
coordinator before any provider sees them; a schema within those bounds that would take the
grammar converter half a minute is refused by the provider at its deadline and not tried on
another provider; counting tokens compiles no grammar; a sealed 11 MB request with a wrong
API key is answered 401 before its body is read, let alone decrypted. Nobody is charged for
a refusal, the books balance, and the coordinator keeps serving others throughout.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from moonflower.client.sealed import ERROR_HEADER, SEALED_CONTENT_TYPE, SealedRequest, fetch_key
from moonflower.coordinator.dialects.request_body import MAX_ANTHROPIC_STOPS
from moonflower.coordinator.dialects.schema_bounds import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH
from moonflower.provider.engines.grammar import COMPILE_DEADLINE_S
from tests.adversarial.conftest import (
    ONE_OR_TWO_REPLICAS,
    Books,
    Consumer,
    EnrolledProvider,
    Liveness,
    RunningCoordinator,
    StartCoordinator,
    one_or_two_replicas,
)
from tests.support.network import Process
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai
from tests.support.scripted_provider import ScriptedProvider

Enroll = Callable[[str], Awaitable[EnrolledProvider]]

REAL_MODEL = "smollm2-135m-instruct"
SEALED_REQUEST_BYTES = 11 * 1024 * 1024


@pytest.fixture(params=ONE_OR_TWO_REPLICAS)
def coordinator(
    request: pytest.FixtureRequest, start_coordinator: StartCoordinator
) -> RunningCoordinator:
    """These attacks run against one coordinator and against two replicas."""
    return one_or_two_replicas(request, start_coordinator)


def nested_schema(depth: int) -> dict[str, Any]:
    """An object schema `depth` JSON levels deep (each object level is two)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth // 2):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def huge_schema(size: int) -> dict[str, Any]:
    """An object schema of exactly `size` bytes as compact JSON."""
    empty = len(orjson.dumps({"type": "object", "description": ""}))
    return {"type": "object", "description": "x" * (size - empty)}


def slow_schema(objects: int = 6, optional: int = 900) -> dict[str, Any]:
    """Within the coordinator's bounds (6 x 900 optional properties: 64 KB, 4 levels deep),
    yet about 30 s of work for the grammar converter, which grows with the cube of an
    object's optional properties."""
    return {
        "type": "object",
        "properties": {
            f"o{k}": {"type": "object", "properties": {f"p{i}": {} for i in range(optional)}}
            for k in range(objects)
        },
    }


async def refused_unseen(
    books: Books,
    consumer: Consumer,
    provider: ScriptedProvider,
    send: Callable[[], Awaitable[httpx.Response]],
) -> httpx.Response:
    """Send a request that must be refused with a 400 before any provider sees it: no job
    reaches `provider`, no hold is taken, nothing is charged, the books balance."""
    before = await books.balances()
    response = await send()
    assert response.status_code == 400, response.text
    assert provider.jobs == {} and provider.pending_jobs() == 0
    assert await books.holds() == []
    assert await books.balances() == before
    assert (await books.account(consumer.name)).held_micro_usd == 0
    await books.assert_balanced()
    return response


# --- refused by the coordinator --------------------------------------------------------------


async def test_a_hundred_thousand_stop_sequences_never_reach_a_provider(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("scripted-provider")
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(coordinator.base_url)
        message = {
            "model": "scripted",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Count to ten."}],
            "stop_sequences": [f"stop{i}" for i in range(100_000)],
        }
        anthropic = await refused_unseen(
            books,
            consumer,
            provider,
            lambda: consumer.client.post("/v1/messages", json=message),
        )
        body = anthropic.json()
        assert_valid_anthropic("ErrorResponse", body)
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"] == (
            f"stop_sequences: List should have at most {MAX_ANTHROPIC_STOPS} items after "
            "validation, not 100000"
        )
        too_long = {**message, "stop_sequences": ["x" * 257]}
        long_stop = await refused_unseen(
            books,
            consumer,
            provider,
            lambda: consumer.client.post("/v1/messages", json=too_long),
        )
        assert long_stop.json()["error"]["message"].startswith("stop_sequences.0: ")
        openai = await refused_unseen(
            books, consumer, provider, lambda: consumer.chat(stop=["a", "b", "c", "d", "e"])
        )
        assert_valid_openai("ErrorResponse", openai.json())
        assert openai.json()["error"]["param"] == "stop"
        assert openai.json()["error"]["code"] == "array_above_max_length"
        await assert_live()


async def test_schemas_too_deep_or_too_large_never_reach_a_provider(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("scripted-provider")
    deep, large = nested_schema(MAX_SCHEMA_DEPTH + 2), huge_schema(MAX_SCHEMA_BYTES + 1)
    user = [{"role": "user", "content": "Fill it in."}]
    attempts: list[tuple[str, dict[str, Any], str]] = [
        (
            "/v1/chat/completions",
            {
                "model": "scripted",
                "messages": user,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "deep", "schema": deep},
                },
            },
            "response_format.json_schema.schema",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "scripted",
                "messages": user,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": large}}],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
        (
            "/v1/responses",
            {
                "model": "scripted",
                "input": "Fill it in.",
                "text": {"format": {"type": "json_schema", "name": "big", "schema": large}},
            },
            "text.format.schema",
        ),
        (
            "/v1/messages",
            {
                "model": "scripted",
                "max_tokens": 16,
                "messages": user,
                "tools": [{"name": "f", "input_schema": deep}],
                "tool_choice": {"type": "any"},
            },
            "tools.0.input_schema",
        ),
        (
            "/v1/messages/count_tokens",
            {
                "model": "scripted",
                "messages": user,
                "tools": [{"name": "f", "input_schema": large}],
            },
            "tools.0.input_schema",
        ),
    ]
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(coordinator.base_url)
        for path, payload, field in attempts:

            async def send(path: str = path, payload: dict[str, Any] = payload) -> httpx.Response:
                return await consumer.client.post(path, json=payload)

            response = await refused_unseen(books, consumer, provider, send)
            error = response.json()["error"]
            if path.startswith("/v1/messages"):
                assert error["message"].startswith(f"{field}: the JSON schema "), error
            else:
                assert error["param"] == field, error
                assert error["message"].startswith(f"Invalid '{field}': the JSON schema "), error
        await assert_live()


# --- refused by a real provider --------------------------------------------------------------


def start_real_providers(coordinator: RunningCoordinator, count: int) -> list[Process]:
    """`count` real `moonflower provider serve` processes with the bundled model, one slot
    each, enrolled with their own provider accounts."""
    return [
        coordinator.network.start_provider(f"real-{n}", "default", "--slots", "1")
        for n in range(count)
    ]


def attempts_logged(process: Process) -> list[str]:
    """The jobs a provider process reports failing (it logs `job ID failed: code=…`)."""
    return re.findall(r"job (\S+) failed: code=(\S+)", process.log())


async def test_a_schema_too_slow_to_compile_is_refused_once_and_not_retried(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    assert_live: Liveness,
) -> None:
    providers = start_real_providers(coordinator, 2)
    before = await books.balances()
    schema = slow_schema()
    assert len(orjson.dumps(schema)) <= MAX_SCHEMA_BYTES  # within the coordinator's bounds
    fmt = {"type": "json_schema", "json_schema": {"name": "form", "schema": schema}}
    response = await consumer.chat("Fill in the form.", model=REAL_MODEL, response_format=fmt)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "response_format")
    assert f"takes more than {COMPILE_DEADLINE_S:g} s to turn into a grammar" in error["message"]
    # Refused at the provider's deadline (converted once, on one provider), before the
    # coordinator's first-event time-out would have sent the job to the second provider.
    conversions = sum(p.log().count("converting an output schema to a grammar") for p in providers)
    assert conversions == 1
    failures = [failure for process in providers for failure in attempts_logged(process)]
    assert [code for _job, code in failures] == ["invalid_request"]
    sent = re.findall(r"job (\S+) sent to provider (\S+)", coordinator.log())
    assert [job for job, _provider in sent] == [failures[0][0]]  # one attempt, no retry
    await books.wait_settled()
    after = await books.balances()
    assert after[consumer.name] == before[consumer.name]
    assert all(after.get(f"real-{n}", 0) == 0 for n in range(2))
    await books.assert_balanced()
    await assert_live()


async def test_counting_tokens_with_an_expensive_forced_tool_answers_at_once(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    assert_live: Liveness,
) -> None:
    [provider] = start_real_providers(coordinator, 1)
    before = await books.balances()
    # One object of 900 optional properties: seconds of grammar work, a prompt that fits.
    tool = {"name": "fill", "description": "Fill the form.", "input_schema": slow_schema(1)}
    payload = {
        "model": REAL_MODEL,
        "messages": [{"role": "user", "content": "Fill in the form."}],
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "fill"},
    }
    counted = await consumer.client.post("/v1/messages/count_tokens", json=payload)
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] > 1000
    # Compiling the forced call's grammar takes seconds, up to the deadline: none was tried
    # (decided from the provider's own log, not from a timing guess on a shared machine).
    assert attempts_logged(provider) == []
    assert "converting an output schema to a grammar" not in provider.log()
    await books.wait_settled()
    assert (await books.balances())[consumer.name] == before[consumer.name]  # counting is free
    await books.assert_balanced()
    await assert_live()


# --- sealed requests -------------------------------------------------------------------------


async def test_a_sealed_11_mb_request_with_a_wrong_key_is_refused_before_it_is_read(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("scripted-provider")
    async with (
        ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as provider,
        httpx.AsyncClient(base_url=coordinator.base_url, timeout=30) as stranger,
    ):
        await provider.wait_routable(coordinator.base_url)
        before = await books.balances()
        key = await fetch_key(stranger)
        prompt = "x" * (SEALED_REQUEST_BYTES * 3 // 4 - 64 * 1024)  # ~11 MB once sealed
        sealed = SealedRequest.of_json(
            key, {"model": "scripted", "messages": [{"role": "user", "content": prompt}]}
        )
        assert len(sealed.content) > 10 * 1024 * 1024
        # The whole envelope, sent with a wrong key: 401, not the 413 its size would get.
        wrong_key = {**sealed.headers, "Authorization": "Bearer mf-not-a-real-key"}
        whole = await stranger.post(
            "/v1/chat/completions", content=sealed.content, headers=wrong_key
        )
        assert whole.status_code == 401, whole.text
        assert whole.json()["error"]["code"] == "invalid_api_key"
        # A box that would not open (400 decryption_failed with a key): still 401.
        broken = orjson.loads(sealed.content)
        broken["sealed"] = "A" * len(broken["sealed"])
        anthropic = await stranger.post(
            "/v1/messages",
            content=orjson.dumps(broken)[: 64 * 1024],
            headers={"Content-Type": SEALED_CONTENT_TYPE, "x-api-key": "sk-ant-wrong"},
        )
        assert anthropic.status_code == 401
        assert anthropic.json()["error"]["type"] == "authentication_error"
        assert anthropic.headers[ERROR_HEADER] == "invalid_api_key"
        # 11 MB announced, 1 KB sent: the 401 comes while the body is still on its way.
        status = await status_with_body_unsent(coordinator.base_url, SEALED_REQUEST_BYTES)
        assert status == 401
        assert provider.jobs == {}
        assert await books.balances() == before
        await books.assert_balanced()
        await assert_live()


async def status_with_body_unsent(base_url: str, announced: int) -> int:
    """The status of a sealed request whose headers announce `announced` bytes of body of
    which only the first kilobyte is ever sent."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\n"
            + f"Host: {host}\r\nAuthorization: Bearer mf-not-a-real-key\r\n".encode()
            + f"Content-Type: {SEALED_CONTENT_TYPE}\r\nContent-Length: {announced}\r\n\r\n".encode()
            + b'{"kid": "'
            + b"0" * 1014
            + b'"'
        )
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_sealed_request_with_the_right_key_is_still_served(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    path: str,
) -> None:
    """The key check before decryption turns away only wrong keys."""
    enrolled = await provider_token("scripted-provider")
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(coordinator.base_url)
        sealed = SealedRequest.of_json(
            await fetch_key(consumer.client),
            {
                "model": "scripted",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hello"}],
            },
        )

        async def serve() -> None:
            job = await provider.next_job()
            await job.serve_honestly(["Hello"])

        response, _ = await asyncio.gather(
            consumer.client.post(path, content=sealed.content, headers=sealed.headers), serve()
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == SEALED_CONTENT_TYPE
    assert "Hello" in orjson.dumps(sealed.open_json(response)).decode()
    await books.wait_settled()
    await books.assert_balanced()
