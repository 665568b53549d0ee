"""Every whole body and every streamed event of chat completions, legacy completions and
Anthropic Messages validates against OpenAI's and Anthropic's official OpenAPI documents:
answers of each kind (plain, system prompt, multi-turn, forced tool call), whole and
streamed with usage, Anthropic's token counts, and every error status the routes return.

Real processes and the real model. Requests are made with the official SDKs, as a user
would; the raw JSON of the same response is what gets validated, and the SDK must parse
it too, so one short generation feeds every check of its case."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from moonflower.coordinator.request_reading import MIN_TRUST_HEADER
from tests.support.conformance import (
    HUGE,
    MODEL,
    Failure,
    Keys,
    anthropic_client,
    expect_failure,
    openai_client,
    rate_limited_network,
)
from tests.support.network import LocalNetwork
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai

pytestmark = pytest.mark.slow

TEXT_TOKENS = 6
TOOL_TOKENS = 60

USER = {"role": "user", "content": "Say hello."}
SYSTEM = "You are a terse assistant."
HISTORY = [
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Hello Ada."},
    {"role": "user", "content": "What is my name?"},
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
ASK = {"role": "user", "content": "What is the weather in Paris?"}

CHAT_CASES: dict[str, dict[str, Any]] = {
    "plain": {"messages": [USER]},
    "system": {"messages": [{"role": "system", "content": SYSTEM}, USER]},
    "multi_turn": {"messages": HISTORY},
    "forced_tool": {
        "messages": [ASK],
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
}
MESSAGES_CASES: dict[str, dict[str, Any]] = {
    "plain": {"messages": [USER]},
    "system": {"system": SYSTEM, "messages": [USER]},
    "multi_turn": {"messages": HISTORY},
    "forced_tool": {
        "messages": [ASK],
        "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    },
}
ANTHROPIC_EVENT_SCHEMAS = {
    "message_start": "MessageStartEvent",
    "content_block_start": "ContentBlockStartEvent",
    "content_block_delta": "ContentBlockDeltaEvent",
    "content_block_stop": "ContentBlockStopEvent",
    "message_delta": "MessageDeltaEvent",
    "message_stop": "MessageStopEvent",
}


def max_tokens(case: str) -> int:
    return TOOL_TOKENS if case == "forced_tool" else TEXT_TOKENS


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
def claude(network: LocalNetwork, keys: Keys) -> anthropic.Anthropic:
    return anthropic_client(network, keys.funded)


@dataclass(frozen=True)
class Event:
    name: str | None
    data: str


def sse_events(raw: bytes) -> list[Event]:
    """The events of an SSE body, keep-alive comments skipped."""
    events = []
    for block in raw.decode().split("\n\n"):
        fields = [line.split(": ", 1) for line in block.split("\n") if line and line[0] != ":"]
        if not fields:
            continue
        named = dict(fields)
        assert set(named) <= {"event", "data"}, block
        events.append(Event(named.get("event"), named["data"]))
    return events


def openai_chunks(raw: bytes, schema: str) -> list[dict[str, Any]]:
    """The chunks of an OpenAI stream, each checked against `schema`; the stream must end
    with exactly one `[DONE]`."""
    events = sse_events(raw)
    assert [e.data for e in events].count("[DONE]") == 1 and events[-1].data == "[DONE]"
    chunks = [json.loads(event.data) for event in events[:-1]]
    for chunk in chunks:
        assert "error" not in chunk, chunk
        assert_valid_openai(schema, chunk)
    return chunks


def assert_usage_last(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """With `include_usage`, every chunk but the last carries `usage: null`; the last one
    has no choices and the usage of the whole request."""
    *answer, last = chunks
    assert all("usage" in chunk and chunk["usage"] is None for chunk in answer)
    assert last["choices"] == []
    usage: dict[str, Any] = last["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


# --- OpenAI chat completions ------------------------------------------------------------


@pytest.mark.parametrize("case", CHAT_CASES)
def test_chat_completion_body_conforms(oai: openai.OpenAI, case: str) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=max_tokens(case), **CHAT_CASES[case]
    )
    body = raw.http_response.json()
    assert_valid_openai("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    # Optional in the document, but OpenAI always sends it and strict clients expect it.
    assert choice["message"]["annotations"] == []
    completion = raw.parse()
    assert completion.id == body["id"]
    message = completion.choices[0].message
    assert message.content == choice["message"]["content"]
    if case == "forced_tool":
        assert completion.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls is not None
        call = message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"]
    else:
        assert message.content


@pytest.mark.parametrize("case", CHAT_CASES)
def test_chat_completion_stream_conforms(oai: openai.OpenAI, case: str) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        max_tokens=max_tokens(case),
        stream=True,
        stream_options={"include_usage": True},
        **CHAT_CASES[case],
    )
    assert raw.http_response.headers["content-type"].startswith("text/event-stream")
    chunks = openai_chunks(raw.http_response.read(), "CreateChatCompletionStreamResponse")
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert all(reason is None for reason in finishes[:-1])
    assert (finishes[-1] == "tool_calls") == (case == "forced_tool")
    # OpenAI's chunk delta defines no `annotations` (only the whole message has them).
    assert not any("annotations" in c["choices"][0]["delta"] for c in chunks if c["choices"])
    usage = assert_usage_last(chunks)
    parsed = list(raw.parse())  # the SDK reads the same bytes
    assert [chunk.model_dump(exclude_unset=True) for chunk in parsed] == chunks
    assert parsed[-1].usage is not None
    assert parsed[-1].usage.completion_tokens == usage["completion_tokens"]
    if case == "forced_tool":
        calls = [
            call
            for chunk in parsed
            for choice in chunk.choices
            for call in choice.delta.tool_calls or ()
        ]
        assert calls[0].function is not None and calls[0].function.name == "get_weather"
        arguments = "".join(call.function.arguments or "" for call in calls if call.function)
        assert json.loads(arguments)["city"]


# --- OpenAI legacy completions ----------------------------------------------------------


def test_legacy_completion_body_conforms(oai: openai.OpenAI) -> None:
    raw = oai.completions.with_raw_response.create(
        model=MODEL, prompt="Once upon a time", max_tokens=TEXT_TOKENS
    )
    body = raw.http_response.json()
    assert_valid_openai("CreateCompletionResponse", body)
    completion = raw.parse()
    assert completion.choices[0].text == body["choices"][0]["text"] != ""
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_legacy_completion_stream_conforms(oai: openai.OpenAI) -> None:
    raw = oai.completions.with_raw_response.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=TEXT_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = sse_events(raw.http_response.read())
    assert [e.data for e in events].count("[DONE]") == 1 and events[-1].data == "[DONE]"
    chunks = [json.loads(event.data) for event in events[:-1]]
    assert_usage_last(chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    for chunk in chunks:
        assert_valid_openai("CreateCompletionResponse", as_documented(chunk))
    parsed = list(raw.parse())
    assert [chunk.model_dump(exclude_unset=True) for chunk in parsed] == chunks


def as_documented(chunk: dict[str, Any]) -> dict[str, Any]:
    """A legacy stream chunk as OpenAI's document can check it.

    The document describes stream chunks with the whole body's schema, in which neither
    `finish_reason` nor `usage` may be null; OpenAI's own streams send both as null until
    the end (its reference for `stream_options` says so for `usage`), and so does this
    one, which the caller has checked. Those nulls are set aside here — a null
    `finish_reason` reads as "length", a null `usage` as absent — and everything else in
    the chunk is checked against the document as sent."""
    choices = [
        choice if choice["finish_reason"] is not None else {**choice, "finish_reason": "length"}
        for choice in chunk["choices"]
    ]
    rest = {key: value for key, value in chunk.items() if key != "usage" or value is not None}
    return {**rest, "choices": choices}


# --- Anthropic Messages -----------------------------------------------------------------


@pytest.mark.parametrize("case", MESSAGES_CASES)
def test_message_body_conforms(claude: anthropic.Anthropic, case: str) -> None:
    raw = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=max_tokens(case), **MESSAGES_CASES[case]
    )
    body = raw.http_response.json()
    assert_valid_anthropic("Message", body)
    message = raw.parse()
    assert message.id == body["id"]
    if case == "forced_tool":
        assert message.stop_reason == "tool_use"
        block = message.content[-1]
        assert isinstance(block, anthropic.types.ToolUseBlock)
        assert block.name == "get_weather" and isinstance(block.input, dict)
    else:
        assert isinstance(message.content[0], anthropic.types.TextBlock)
        assert message.content[0].text


@pytest.mark.parametrize("case", MESSAGES_CASES)
def test_message_stream_conforms(claude: anthropic.Anthropic, case: str) -> None:
    raw = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=max_tokens(case), stream=True, **MESSAGES_CASES[case]
    )
    assert raw.http_response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.http_response.read())
    names = []
    for event in events:
        assert event.name is not None
        data = json.loads(event.data)
        assert data["type"] == event.name
        if event.name in ANTHROPIC_EVENT_SCHEMAS:
            assert_valid_anthropic(ANTHROPIC_EVENT_SCHEMAS[event.name], data)
            assert_valid_anthropic("MessageStreamEvent", data)
        elif event.name == "ping":
            assert data == {"type": "ping"}  # the document has no schema for it
        else:
            # Moonflower's own event (no error here): the provider's signed receipt, under a
            # name Anthropic does not use, just before the end.
            assert event.name == "moonflower_receipt", data
        names.append(event.name)
    assert names[0] == "message_start"
    assert names[-3:] == ["message_delta", "moonflower_receipt", "message_stop"]
    parsed = list(raw.parse())  # the SDK reads the same bytes; it drops pings
    assert [e.type for e in parsed] == [n for n in names if n != "ping"]
    delta = parsed[-3]
    assert isinstance(delta, anthropic.types.RawMessageDeltaEvent)
    is_tool_use = delta.delta.stop_reason == "tool_use"
    assert is_tool_use == (case == "forced_tool")
    assert delta.usage.output_tokens > 0


@pytest.mark.parametrize("case", MESSAGES_CASES)
def test_count_tokens_conforms(claude: anthropic.Anthropic, case: str) -> None:
    raw = claude.messages.with_raw_response.count_tokens(model=MODEL, **MESSAGES_CASES[case])
    body = raw.http_response.json()
    assert_valid_anthropic("CountMessageTokensResponse", body)
    assert raw.parse().input_tokens == body["input_tokens"] > 0


# --- Errors -----------------------------------------------------------------------------


FAILURES = {
    "400 bad input": Failure(400, extra={"temperature": 7}),
    "400 prompt over the context": Failure(400, content="lighthouse " * 9000),
    "401 bad key": Failure(401, key=lambda _: "mf-not-a-real-key"),
    "402 no balance": Failure(402, key=lambda keys: keys.broke),
    "404 unknown model": Failure(404, model="no-such-model"),
    "413 too large": Failure(413, content=HUGE),
    "429 rate limited": Failure(429, key=lambda keys: keys.burst, model="no-such-model"),
    "503/529 no provider at the trust asked": Failure(
        503, anthropic_status=529, headers={MIN_TRUST_HEADER: "hardware"}
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", FAILURES)
def test_chat_completion_errors_conform(
    network: LocalNetwork, keys: Keys, name: str, stream: bool
) -> None:
    failure = FAILURES[name]
    client = openai_client(network, failure.key(keys))

    def call() -> object:
        return client.chat.completions.create(
            model=failure.model,
            messages=[{"role": "user", "content": failure.content}],
            max_tokens=TEXT_TOKENS,
            stream=stream,
            extra_body=failure.extra,
            extra_headers=failure.headers,
        )

    response = expect_failure(failure.status, call, openai.APIStatusError)
    assert_valid_openai("ErrorResponse", response.json())


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", FAILURES)
def test_message_errors_conform(network: LocalNetwork, keys: Keys, name: str, stream: bool) -> None:
    failure = FAILURES[name]
    client = anthropic_client(network, failure.key(keys))

    def call() -> object:
        return client.messages.create(
            model=failure.model,
            messages=[{"role": "user", "content": failure.content}],
            max_tokens=TEXT_TOKENS,
            stream=stream,
            extra_body=failure.extra,
            extra_headers=failure.headers,
        )

    status = failure.anthropic_status or failure.status
    response = expect_failure(status, call, anthropic.APIStatusError)
    body = response.json()
    assert_valid_anthropic("ErrorResponse", body)
    assert body["request_id"], "Anthropic names the request in every error"


@pytest.mark.parametrize(
    ("status", "body"),
    [(400, {"model": MODEL}), (404, {"model": "no-such-model", "messages": [USER]})],
    ids=["400 bad input", "404 unknown model"],
)
def test_count_tokens_errors_conform(
    network: LocalNetwork, keys: Keys, status: int, body: dict[str, Any]
) -> None:
    response = httpx.post(
        f"{network.base_url}/v1/messages/count_tokens",
        headers={"x-api-key": keys.funded, "anthropic-version": "2023-06-01"},
        json=body,
        timeout=60,
    )
    assert response.status_code == status, response.text
    assert_valid_anthropic("ErrorResponse", response.json())


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_legacy_completion_error_conforms(oai: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=1, stream=stream)
    assert_valid_openai("ErrorResponse", caught.value.response.json())
