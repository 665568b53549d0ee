"""Tools, structured output and log-probabilities in chat completions, with the real model
and the official OpenAI SDK; every body and chunk checked against OpenAI's own document."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import orjson
import pytest

from tests.support.network import LocalNetwork
from tests.support.openapi import assert_valid_openai

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
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
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER_SCHEMA,
        },
    }
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED: Any = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client(network: LocalNetwork, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=api_key, max_retries=0)


def raw_post(network: LocalNetwork, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{network.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=120,
    )


def test_forced_tool_call_arguments_validate(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCED, max_tokens=120
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)


def test_forced_tool_call_streams_argument_deltas(
    network: LocalNetwork, api_key: str, client: openai.OpenAI
) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": FORCED,
        "max_tokens": 120,
        "stream": True,
    }
    response = raw_post(network, api_key, body)
    chunks = [
        orjson.loads(line[6:])
        for line in response.text.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    for chunk in chunks:
        assert_valid_openai("CreateChatCompletionStreamResponse", chunk)
    pieces = [
        call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert pieces[0]["id"] and pieces[0]["function"]["name"] == "get_weather"
    assert len(pieces) > 1  # arguments arrive as they are generated
    arguments = "".join(p["function"].get("arguments", "") for p in pieces)
    jsonschema.validate(json.loads(arguments), WEATHER_SCHEMA)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # The SDK's stream helper assembles the same call.
    with client.chat.completions.stream(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCED, max_tokens=120
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_SCHEMA)


def test_required_tool_choice_calls_one_of_the_tools(client: openai.OpenAI) -> None:
    tools = [
        *TOOLS,
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {
                    "type": "object",
                    "properties": {"zone": {"type": "string", "maxLength": 30}},
                    "required": ["zone"],
                },
            },
        },
    ]
    completion = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=tools, tool_choice="required", max_tokens=120
    )
    calls = completion.choices[0].message.tool_calls
    assert calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    jsonschema.validate(json.loads(calls[0].function.arguments), schemas[calls[0].function.name])


def test_tool_result_in_a_follow_up_turn(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
    ]
    completion = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=40
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.prompt_tokens > 40


def test_json_schema_response_validates(network: LocalNetwork, api_key: str) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Invent a person."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
        "max_tokens": 120,
    }
    response = raw_post(network, api_key, body)
    assert response.status_code == 200
    payload = response.json()
    assert_valid_openai("CreateChatCompletionResponse", payload)
    jsonschema.validate(json.loads(payload["choices"][0]["message"]["content"]), schema)


def test_json_object_response_parses(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}],
        response_format={"type": "json_object"},
        max_tokens=400,
        temperature=0,
    )
    # A JSON object cut by max_tokens cannot parse; this prompt ends well inside the limit.
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_logprobs_cover_every_completion_token(network: LocalNetwork, api_key: str) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "max_tokens": 12,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    payload = raw_post(network, api_key, body).json()
    assert_valid_openai("CreateChatCompletionResponse", payload)
    content = payload["choices"][0]["logprobs"]["content"]
    assert len(content) == payload["usage"]["completion_tokens"]
    for entry in content:
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        # Greedy decoding picks the most likely token.
        assert entry["logprob"] == pytest.approx(max(t["logprob"] for t in entry["top_logprobs"]))
    assert "".join(e["token"] for e in content) == payload["choices"][0]["message"]["content"]


def test_plain_bodies_and_chunks_match_the_official_document(
    network: LocalNetwork, api_key: str
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 8}
    assert_valid_openai("CreateChatCompletionResponse", raw_post(network, api_key, body).json())
    streamed = raw_post(
        network, api_key, {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    for line in streamed.text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            assert_valid_openai("CreateChatCompletionStreamResponse", orjson.loads(line[6:]))
    models = httpx.get(
        f"{network.base_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}
    ).json()
    assert_valid_openai("ListModelsResponse", models)
    error = raw_post(network, api_key, {**body, "temperature": 5}).json()
    assert_valid_openai("ErrorResponse", error)
