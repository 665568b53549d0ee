"""The Anthropic Messages API through real processes and the real model, called with the
official `anthropic` SDK (base URL = the coordinator's root, as for api.anthropic.com) and
with raw HTTP where the exact events matter; bodies and events are checked against
Anthropic's own document."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.support.network import LocalNetwork
from tests.support.openapi import assert_valid_anthropic

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a concise assistant."
MESSAGES: list[Any] = [{"role": "user", "content": "Name three colours of the rainbow."}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "input_schema": WEATHER_SCHEMA,
    }
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED: Any = {"type": "tool", "name": "get_weather"}
GREEDY = {"temperature": 0}
"""Current SDKs no longer take sampling arguments (newer Claude models refuse them); the API
still does, so they go in the body directly."""


@pytest.fixture(scope="module")
def client(network: LocalNetwork, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=network.base_url, api_key=api_key, max_retries=0)


def raw_stream(network: LocalNetwork, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data of every event of a streamed answer, each checked against the document."""
    response = httpx.post(
        f"{network.base_url}/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={**body, "stream": True},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    events = []
    for frame in response.text.strip().split("\n\n"):
        name_line, data_line = frame.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line[len("data: ") :])
        assert data["type"] == name
        if name not in ("ping", "moonflower_receipt"):
            assert_valid_anthropic("MessageStreamEvent", data)
        events.append(data)
    return events


def text_of(message: anthropic.types.Message) -> str:
    """The text of a message whose first block is text."""
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock), block
    return block.text


def test_create_returns_a_message(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL, system=SYSTEM, messages=MESSAGES, max_tokens=40, extra_body=GREEDY
    )
    assert_valid_anthropic("Message", raw.http_response.json())
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", MODEL)
    assert [block.type for block in message.content] == ["text"]
    assert text_of(message)
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.stop_sequence is None
    assert message.usage.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 40


def test_stream_helper_text_equals_the_final_message_and_a_create(
    client: anthropic.Anthropic,
) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "system": SYSTEM,
        "messages": MESSAGES,
        "max_tokens": 40,
        "extra_body": GREEDY,
    }
    whole = client.messages.create(**params)
    with client.messages.stream(**params) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text_of(final) == text_of(whole) == text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_raw_stream_follows_anthropics_event_order(network: LocalNetwork, api_key: str) -> None:
    events = raw_stream(network, api_key, {"model": MODEL, "messages": MESSAGES, "max_tokens": 20})
    kinds = [event["type"] for event in events]
    assert kinds[-2] == "moonflower_receipt"  # the provider's signed receipt, before the end
    events = [e for e in events if e["type"] != "moonflower_receipt"]
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(e["delta"]["type"] == "text_delta" for e in events[3:-3])
    assert events[-2]["usage"]["output_tokens"] <= 20
    assert events[-2]["usage"]["input_tokens"] == events[0]["message"]["usage"]["input_tokens"]


def test_count_tokens_equals_the_input_tokens_of_a_create(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=MESSAGES)
    message = client.messages.create(
        model=MODEL, system=SYSTEM, messages=MESSAGES, max_tokens=5, extra_body=GREEDY
    )
    assert counted.input_tokens == message.usage.input_tokens > 0
    question = MESSAGES[0]["content"] + " And three animals."
    longer: list[Any] = [{"role": "user", "content": question}]
    more = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=longer)
    assert more.input_tokens > counted.input_tokens


def test_forced_tool_call_input_validates(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCED, max_tokens=120
    )
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].id
    jsonschema.validate(calls[0].input, WEATHER_SCHEMA)


def test_forced_tool_call_streams_input_json(
    network: LocalNetwork, api_key: str, client: anthropic.Anthropic
) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": FORCED,
        "max_tokens": 120,
    }
    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER_SCHEMA)
    events = raw_stream(network, api_key, params)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts[-1]["type"] == "tool_use" and starts[-1]["input"] == {}
    pieces = [
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
    ]
    jsonschema.validate(json.loads("".join(pieces)), WEATHER_SCHEMA)


def test_a_stop_sequence_ends_with_stop_sequence(client: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "Write a short poem about the sea."}]
    free = client.messages.create(model=MODEL, messages=ask, max_tokens=60, extra_body=GREEDY)
    text = text_of(free)
    assert len(text) > 12, text
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    cut = text[: text.index(stop)]
    params: dict[str, Any] = {
        "model": MODEL,
        "messages": ask,
        "max_tokens": 60,
        "extra_body": GREEDY,
        "stop_sequences": ["never-appears", stop],
    }
    stopped = client.messages.create(**params)
    with client.messages.stream(**params) as stream:
        streamed = stream.get_final_message()
    for message in (stopped, streamed):
        assert message.stop_reason == "stop_sequence"
        assert message.stop_sequence == stop
        assert text_of(message) == cut


def test_max_tokens_ends_with_max_tokens(client: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "Write a long story about a lighthouse."}]
    message = client.messages.create(model=MODEL, messages=ask, max_tokens=5, extra_body=GREEDY)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5


def test_errors_raise_the_sdks_own_exceptions(
    network: LocalNetwork, client: anthropic.Anthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as too_hot:
        client.messages.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, extra_body={"temperature": 1.5}
        )
    assert "temperature" in str(too_hot.value)
    with pytest.raises(anthropic.BadRequestError) as no_limit:
        # The SDK's signature requires max_tokens, so post the body directly.
        client.post(
            "/v1/messages",
            body={"model": MODEL, "messages": MESSAGES},
            cast_to=anthropic.types.Message,
        )
    assert "max_tokens" in str(no_limit.value)
    assert_valid_anthropic("ErrorResponse", no_limit.value.body)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", messages=MESSAGES, max_tokens=5)
    stranger = anthropic.Anthropic(base_url=network.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        stranger.messages.create(model=MODEL, messages=MESSAGES, max_tokens=5)
