"""Every whole body and every streamed event of the Responses API (`POST /v1/responses`)
validates against OpenAI's official OpenAPI document and against the Open Responses
specification: answers of each kind (plain, instructions, multi-turn input, forced tool
call), whole and streamed, the sampling values they report, and every error status the
route returns.

Real processes and the real model. Requests are made with the official `openai` SDK, as a
user would; the raw JSON of the same response is what gets validated, and the SDK must
parse it too. The Open Responses client (`openresponses`, strict mode) reads the same kinds
of answers and their streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import openresponses
import pytest

from moonflower.coordinator.request_reading import MIN_TRUST_HEADER
from tests.support.conformance import (
    HUGE,
    MODEL,
    Failure,
    Keys,
    expect_failure,
    openai_client,
    rate_limited_network,
)
from tests.support.network import LocalNetwork
from tests.support.openapi import assert_valid_openai
from tests.support.responses_conformance import (
    RECEIPT_EVENT,
    assert_event_conforms,
    assert_response_conforms,
)

pytestmark = pytest.mark.slow

"""Per key; the main key makes well under half as many requests in the whole module."""
TEXT_TOKENS = 6
TOOL_TOKENS = 60
OPEN_RESPONSES_MIN_TOKENS = 16
"""The Open Responses client refuses to ask for fewer (as OpenAI's API does)."""

HELLO = "Say hello."
HISTORY = [
    {"type": "message", "role": "user", "content": "My name is Ada."},
    {"type": "message", "role": "assistant", "content": "Hello Ada."},
    {"type": "message", "role": "user", "content": "What is my name?"},
]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CASES: dict[str, dict[str, Any]] = {
    "plain": {"input": HELLO},
    "instructions": {"instructions": "You are a terse assistant.", "input": HELLO},
    "multi_turn": {"input": HISTORY},
    "forced_tool": {
        "input": "What is the weather in Paris?",
        "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}],
        "tool_choice": {"type": "function", "name": "get_weather"},
    },
}


def request(case: str, *, at_least: int = 0) -> dict[str, Any]:
    limit = TOOL_TOKENS if case == "forced_tool" else TEXT_TOKENS
    return {"model": MODEL, "max_output_tokens": max(limit, at_least), **CASES[case]}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from rate_limited_network(tmp_path_factory.mktemp("network"))


@pytest.fixture(scope="module")
def keys(network: LocalNetwork) -> Keys:
    return Keys.create(network)


@pytest.fixture(scope="module")
def oai(network: LocalNetwork, keys: Keys) -> openai.OpenAI:
    return openai_client(network, keys.funded)


@pytest.fixture(scope="module")
def open_client(network: LocalNetwork, keys: Keys) -> Iterator[openresponses.OpenResponses]:
    with openresponses.OpenResponses(
        base_url=f"{network.base_url}/v1", api_key=keys.funded, timeout=60
    ) as client:
        yield client


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The data of every event of a Responses stream; each `event:` line names its type. The
    stream must end with Open Responses' `data: [DONE]`, which is left out."""
    events = []
    blocks = raw.decode().split("\n\n")
    assert [b for b in blocks if b.strip()][-1] == "data: [DONE]"
    for block in blocks:
        if block == "data: [DONE]":
            continue
        fields = [line.split(": ", 1) for line in block.split("\n") if line and line[0] != ":"]
        if not fields:
            continue
        named = dict(fields)
        assert set(named) == {"event", "data"}, block
        data: dict[str, Any] = json.loads(named["data"])
        assert data["type"] == named["event"]
        events.append(data)
    return events


def assert_answer(case: str, response: dict[str, Any]) -> None:
    """What each case must produce, read from the raw response object."""
    assert response["model"] == MODEL
    assert response["usage"]["output_tokens"] > 0
    usage = response["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    if case == "forced_tool":
        assert response["status"] == "completed"
        [call] = response["output"]
        assert (call["type"], call["name"], call["status"]) == (
            "function_call",
            "get_weather",
            "completed",
        )
        assert json.loads(call["arguments"])["city"]
    else:
        assert response["status"] in ("completed", "incomplete")
        [message] = response["output"]
        assert message["type"] == "message" and message["role"] == "assistant"
        assert response["output_text"] == message["content"][0]["text"] != ""


@pytest.mark.parametrize("case", CASES)
def test_a_whole_response_conforms(oai: openai.OpenAI, case: str) -> None:
    raw = oai.responses.with_raw_response.create(**request(case))
    body = raw.http_response.json()
    assert_response_conforms(body)
    assert_answer(case, body)
    assert body["instructions"] == CASES[case].get("instructions")
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)  # SmolLM2's recommended
    parsed = raw.parse()  # the SDK reads the same bytes
    assert (parsed.id, parsed.status, parsed.output_text) == (
        body["id"],
        body["status"],
        body["output_text"],
    )
    assert parsed.usage is not None
    assert parsed.usage.output_tokens == body["usage"]["output_tokens"]


@pytest.mark.parametrize("case", CASES)
def test_every_streamed_event_conforms(oai: openai.OpenAI, case: str) -> None:
    raw = oai.responses.with_raw_response.create(**request(case), stream=True)
    assert raw.http_response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.http_response.read())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        if event["type"] != RECEIPT_EVENT:
            assert_event_conforms(event)
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-2] == RECEIPT_EVENT
    final = events[-1]["response"]
    assert types[-1] == f"response.{final['status']}"
    assert_answer(case, final)
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1
    parsed = list(raw.parse())  # the SDK reads the same bytes
    assert [e.type for e in parsed] == types
    assert [e.model_dump(exclude_unset=True) for e in parsed] == events


@pytest.mark.parametrize("case", CASES)
def test_the_open_responses_client_reads_whole_and_streamed_answers(
    open_client: openresponses.OpenResponses, case: str
) -> None:
    asked = request(case, at_least=OPEN_RESPONSES_MIN_TOKENS)
    whole = open_client.responses.create(asked)
    assert isinstance(whole, openresponses.ResponseResource)
    assert_answer(case, whole.model_dump(mode="json", by_alias=True))
    stream = open_client.responses.create({**asked, "stream": True})
    assert isinstance(stream, openresponses.ResponseStream)
    types: list[str] = []
    # Open Responses ends a stream with a `data: [DONE]` sentinel after the terminal event;
    # the strict client refuses a stream without it.
    with stream:
        types.extend(read_types(stream, into=types))
    assert stream.final_response is not None
    assert types[0] == "response.created"
    assert types[-2] == RECEIPT_EVENT  # an unknown, provider-prefixed event: passed through
    assert types[-1] in ("response.completed", "response.incomplete")


def read_types(stream: openresponses.ResponseStream, *, into: list[str]) -> list[str]:
    """The type of every event of `stream`, each added to `into` as soon as it is read."""
    for event in stream:
        into.append(event.type)
    return []


def test_a_response_reports_the_settings_it_ran_with(oai: openai.OpenAI) -> None:
    settings: dict[str, Any] = {
        "temperature": 0.5,
        "top_p": 0.8,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "top_logprobs": 2,
        "safety_identifier": "user-3f2a",
        "prompt_cache_key": "greetings",
    }
    # OpenAI's API takes no penalties here (its SDK has no argument for them); Open
    # Responses' request body does, as chat completions do.
    penalties = {name: settings.pop(name) for name in ("presence_penalty", "frequency_penalty")}
    raw = oai.responses.with_raw_response.create(
        **request("plain"),
        **settings,
        include=["message.output_text.logprobs"],
        extra_body=penalties,
    )
    settings |= penalties
    body = raw.http_response.json()
    assert_response_conforms(body)
    assert {name: body[name] for name in settings} == settings
    [message] = body["output"]
    logprobs = message["content"][0]["logprobs"]
    assert logprobs and all(len(lp["top_logprobs"]) == 2 for lp in logprobs)
    assert len(logprobs) == body["usage"]["output_tokens"]
    joined = "".join(lp["token"] for lp in logprobs)
    # A character split across tokens (an emoji) shows as U+FFFD in each token's piece.
    if "\ufffd" not in joined:
        assert joined == body["output_text"]
    unset = oai.responses.with_raw_response.create(**request("plain")).http_response.json()
    assert (unset["presence_penalty"], unset["frequency_penalty"]) == (0, 0)
    assert (unset["top_logprobs"], unset["safety_identifier"], unset["prompt_cache_key"]) == (
        0,
        None,
        None,
    )
    assert message["content"][0]["logprobs"] and not unset["output"][0]["content"][0]["logprobs"]


# --- Errors -----------------------------------------------------------------------------


FAILURES = {
    "400 bad input": Failure(400, extra={"temperature": 7}),
    "400 bad penalty": Failure(400, extra={"presence_penalty": 3}),
    "400 prompt over the context": Failure(400, content="lighthouse " * 9000),
    "401 bad key": Failure(401, key=lambda _: "mf-not-a-real-key"),
    "402 no balance": Failure(402, key=lambda keys: keys.broke),
    "404 unknown model": Failure(404, model="no-such-model"),
    "413 too large": Failure(413, content=HUGE),
    "429 rate limited": Failure(429, key=lambda keys: keys.burst, model="no-such-model"),
    "503 no provider at the trust asked": Failure(503, headers={MIN_TRUST_HEADER: "hardware"}),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", FAILURES)
def test_errors_conform(network: LocalNetwork, keys: Keys, name: str, stream: bool) -> None:
    failure = FAILURES[name]
    client = openai_client(network, failure.key(keys))

    def call() -> object:
        return client.responses.create(
            model=failure.model,
            input=failure.content,
            max_output_tokens=TEXT_TOKENS,
            stream=stream,
            extra_body=failure.extra,
            extra_headers=failure.headers,
        )

    body = expect_failure(failure.status, call, openai.APIStatusError).json()
    assert_valid_openai("ErrorResponse", body)
    if failure.status == 400 and failure.extra:
        assert body["error"]["param"] == next(iter(failure.extra))
