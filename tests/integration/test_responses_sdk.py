"""The OpenAI Responses API through real processes and the real model, called with the
official `openai` SDK (and raw HTTP where the exact events matter): whole and streamed
responses agree with each other and with chat completions, limits, forced tool calls,
structured output, follow-up turns with tool results, and the SDK's typed errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import openai
import orjson
import pytest
from openai.types.responses import ResponseFunctionToolCall

from tests.support.network import LocalNetwork
from tests.support.responses_conformance import assert_event_conforms, assert_response_conforms

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
INSTRUCTIONS = "You are a concise assistant."
QUESTION = "Name three colours of the rainbow."
SHORT_QUESTION = "What is 2+2?"  # answered well within 40 tokens
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}
FORCED: Any = {"type": "function", "name": "get_weather"}
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "sure": {"type": "boolean"},
    },
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(network: LocalNetwork, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=api_key, max_retries=0)


def test_create_with_a_string_input(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input=QUESTION, max_output_tokens=32, temperature=0
    )
    assert_response_conforms(raw.http_response.json())  # OpenAI's and Open Responses' documents
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.object == "response" and response.model == MODEL
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.usage is not None
    assert 0 < response.usage.output_tokens <= 32
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )


def test_items_with_instructions_agree_with_chat_completions(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions=INSTRUCTIONS,
        input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}],
        max_output_tokens=32,
        temperature=0,
    )
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=32,
        temperature=0,
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.usage is not None and chat.usage is not None
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens


def test_stream_final_response_holds_the_streamed_text(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input=SHORT_QUESTION, max_output_tokens=40, temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 1
    assert final.output_text == "".join(deltas)
    assert final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    whole = client.responses.create(
        model=MODEL, input=SHORT_QUESTION, max_output_tokens=40, temperature=0
    )
    assert whole.output_text == final.output_text


def test_raw_stream_events_match_the_official_schema(network: LocalNetwork, api_key: str) -> None:
    response = httpx.post(
        f"{network.base_url}/v1/responses",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": MODEL, "input": QUESTION, "max_output_tokens": 24, "stream": True},
        timeout=120,
    )
    assert response.status_code == 200
    events = []
    blocks = response.text.strip().split("\n\n")
    assert blocks[-1] == "data: [DONE]"  # Open Responses' end of stream
    for block in blocks[:-1]:
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        event = orjson.loads(lines["data"])
        assert lines["event"] == event["type"]
        if event["type"] != "moonflower.receipt":  # ours, checked below
            assert_event_conforms(event)  # OpenAI's and Open Responses' documents
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-2]["type"] == "moonflower.receipt"
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert_response_conforms(events[-1]["response"])


def test_max_output_tokens_makes_the_response_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Write a long story about the sea.", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    with client.responses.stream(
        model=MODEL, input="Write a long story about the sea.", max_output_tokens=3
    ) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "incomplete"


def _function_call(output: list[Any]) -> ResponseFunctionToolCall:
    calls = [item for item in output if item.type == "function_call"]
    assert len(calls) == 1, output
    call: ResponseFunctionToolCall = calls[0]
    assert call.name == "get_weather"
    assert call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMETERS)
    return call


def test_a_forced_tool_call_returns_valid_arguments(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice=FORCED,
        max_output_tokens=64,
    )
    assert response.status == "completed"
    _function_call(response.output)


def test_a_forced_tool_call_streams_valid_arguments(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL,
        input="What is the weather in Rome?",
        tools=[WEATHER_TOOL],
        tool_choice=FORCED,
        max_output_tokens=64,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    call = _function_call(final.output)
    streamed = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert streamed == call.arguments


def test_a_json_schema_text_format_validates(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Is the sky blue?",
        text={
            "format": {
                "type": "json_schema",
                "name": "verdict",
                "schema": VERDICT_SCHEMA,
                "strict": True,
            }
        },
        max_output_tokens=64,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), VERDICT_SCHEMA)


def test_a_follow_up_turn_with_a_tool_result_is_answered(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris", "unit": "celsius"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "21 C and sunny"},
        ],
        tools=[WEATHER_TOOL],
        max_output_tokens=24,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete")
    assert response.output
    assert response.usage is not None and response.usage.output_tokens > 0


def test_bad_input_raises_bad_request_naming_the_field(client: openai.OpenAI) -> None:
    items: Any = [{"role": "user", "content": "hi"}, {"type": "web_search_call", "id": "x"}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input=items)
    assert raised.value.status_code == 400
    assert raised.value.param == "input[1].type"
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    assert raised.value.param == "previous_response_id"


def test_bad_key_and_unknown_model_raise_typed_errors(
    client: openai.OpenAI, network: LocalNetwork
) -> None:
    stranger = openai.OpenAI(
        base_url=f"{network.base_url}/v1", api_key="mf-not-a-key", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        stranger.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="no-such-model", input="hi")
    assert raised.value.code == "model_not_found"
