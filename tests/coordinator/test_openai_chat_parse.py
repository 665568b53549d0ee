"""Parsing OpenAI chat bodies into the neutral request: tools, tool turns, formats, logprobs."""

from __future__ import annotations

from typing import Any

import pytest

from moonflower import errors
from moonflower.coordinator.dialects import openai_chat
from moonflower.generation import ResponseFormat, ToolCall, ToolChoice

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_tools_and_a_named_choice_become_neutral_values() -> None:
    request = openai_chat.parse(
        body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    ).request
    assert request.tools[0].name == "get_weather"
    assert request.tools[0].parameters["properties"] == {"city": {"type": "string"}}
    assert request.tool_choice == ToolChoice("function", "get_weather")


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", ToolChoice("auto")),
        ("none", ToolChoice("none")),
        ("required", ToolChoice("required")),
    ],
)
def test_tool_choice_modes(choice: str, expected: ToolChoice) -> None:
    assert (
        openai_chat.parse(body(tools=[WEATHER], tool_choice=choice)).request.tool_choice == expected
    )


def test_a_tool_conversation_keeps_calls_and_results() -> None:
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
    ]
    request = openai_chat.parse(body(messages=messages, tools=[WEATHER])).request
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "4 degrees")


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    parsed = openai_chat.parse(
        body(
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        )
    ).request
    assert parsed.response_format == ResponseFormat("json_schema", schema=schema, name="s")
    as_object = openai_chat.parse(body(response_format={"type": "json_object"})).request
    assert as_object.response_format == ResponseFormat("json_object")
    assert openai_chat.parse(body(response_format={"type": "text"})).request.response_format is None


def test_logprobs_map_to_the_number_of_alternatives() -> None:
    assert openai_chat.parse(body()).request.logprobs is None
    assert openai_chat.parse(body(logprobs=True)).request.logprobs == 0
    assert openai_chat.parse(body(logprobs=True, top_logprobs=5)).request.logprobs == 5


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, None),
        ({"stop": ""}, "stop"),
    ],
)
def test_bad_tool_and_format_fields_name_the_field(
    fields: dict[str, Any], param: str | None
) -> None:
    if param is None:
        openai_chat.parse(body(**fields))  # an empty tool_calls list is harmless
        return
    with pytest.raises(errors.InvalidRequest) as caught:
        openai_chat.parse(body(**fields))
    assert caught.value.param == param


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ],
    ids=["image", "audio", "file"],
)
def test_content_a_text_model_cannot_read_is_refused_by_name(part: dict[str, Any]) -> None:
    content = [{"type": "text", "text": "What is this?"}, part]
    with pytest.raises(errors.InvalidRequest) as refused:
        openai_chat.parse({"model": "m", "messages": [{"role": "user", "content": content}]})
    assert refused.value.param == "messages[0].content[1].type"
    assert f"'{part['type']}' content is not supported" in refused.value.message
    assert "text only" in refused.value.message


def test_text_parts_are_joined_into_one_message() -> None:
    content = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    call = openai_chat.parse({"model": "m", "messages": [{"role": "user", "content": content}]})
    assert call.request.messages[0].content == "one\ntwo"


def test_a_part_without_text_names_the_missing_field() -> None:
    content = [{"type": "text"}]
    with pytest.raises(errors.InvalidRequest) as refused:
        openai_chat.parse({"model": "m", "messages": [{"role": "user", "content": content}]})
    assert refused.value.param == "messages[0].content[0].text"
