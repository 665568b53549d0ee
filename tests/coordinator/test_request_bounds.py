"""Bounds on what a request may make a provider do, refused at parse time as a 400 in the
dialect's own shape naming the field: stop sequences (OpenAI's documented 4, Anthropic's 16,
256 characters each) and JSON schemas (`MAX_SCHEMA_BYTES` serialized, `MAX_SCHEMA_DEPTH`
levels) in `response_format`, `text.format` and every tool's parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from moonflower import errors
from moonflower.coordinator.dialects import (
    anthropic_errors,
    anthropic_messages,
    openai_chat,
    openai_completions,
    openai_errors,
    openai_responses,
)
from moonflower.coordinator.dialects.request_body import (
    MAX_ANTHROPIC_STOPS,
    MAX_OPENAI_STOPS,
    MAX_STOP_CHARS,
)
from moonflower.coordinator.dialects.schema_bounds import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    is_deeper_than,
)
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "hi", **fields}


def message(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 8, "messages": USER, **fields}


def responses(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", **fields}


def openai_refusal(parse: Callable[[Any], object], payload: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(errors.InvalidRequest) as refused:
        parse(payload)
    status, body = openai_errors.status_and_body(refused.value)
    assert status == 400
    assert_valid_openai("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error"
    return error


def anthropic_refusal(payload: dict[str, Any]) -> tuple[str | None, str]:
    with pytest.raises(errors.InvalidRequest) as refused:
        anthropic_messages.parse(payload)
    status, body = anthropic_errors.status_and_body(refused.value)
    assert status == 400
    assert_valid_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "invalid_request_error"
    return refused.value.param, body["error"]["message"]


# --- stop sequences --------------------------------------------------------------------------


@pytest.mark.parametrize("parse", [openai_chat.parse, openai_completions.parse])
def test_openai_takes_up_to_four_stop_sequences(parse: Callable[[Any], Any]) -> None:
    make = chat if parse is openai_chat.parse else completion
    stops = [f"s{i}" for i in range(MAX_OPENAI_STOPS)]
    assert parse(make(stop=stops)).request.stop == tuple(stops)
    error = openai_refusal(parse, make(stop=[*stops, "one more"]))
    assert error == {
        "message": "Invalid 'stop': array too long. Expected an array with maximum length 4, "
        "but got an array with length 5 instead.",
        "type": "invalid_request_error",
        "param": "stop",
        "code": "array_above_max_length",
    }


@pytest.mark.parametrize("parse", [openai_chat.parse, openai_completions.parse])
def test_an_openai_stop_sequence_over_256_characters_is_refused(
    parse: Callable[[Any], Any],
) -> None:
    make = chat if parse is openai_chat.parse else completion
    longest = "x" * MAX_STOP_CHARS
    assert parse(make(stop=longest)).request.stop == (longest,)
    in_a_list = openai_refusal(parse, make(stop=["ok", longest + "x"]))
    assert (in_a_list["param"], in_a_list["code"]) == ("stop[1]", "invalid_value")
    assert "at most 256 characters" in in_a_list["message"]
    alone = openai_refusal(parse, make(stop=longest + "x"))
    assert alone["param"] == "stop"


def test_an_empty_openai_stop_is_refused() -> None:
    assert openai_refusal(openai_chat.parse, chat(stop=""))["param"] == "stop"
    assert openai_refusal(openai_chat.parse, chat(stop=["a", ""]))["param"] == "stop[1]"


def test_anthropic_takes_up_to_sixteen_stop_sequences() -> None:
    stops = [f"s{i}" for i in range(MAX_ANTHROPIC_STOPS)]
    assert anthropic_messages.parse(message(stop_sequences=stops)).request.stop == tuple(stops)
    param, text = anthropic_refusal(message(stop_sequences=[*stops, "more"]))
    assert param == "stop_sequences"
    assert text == "stop_sequences: List should have at most 16 items after validation, not 17"


def test_a_hundred_thousand_anthropic_stop_sequences_are_refused() -> None:
    param, text = anthropic_refusal(message(stop_sequences=["x"] * 100_000))
    assert param == "stop_sequences"
    assert text.endswith("not 100000")


def test_an_anthropic_stop_sequence_over_256_characters_is_refused() -> None:
    longest = "y" * MAX_STOP_CHARS
    request = anthropic_messages.parse(message(stop_sequences=[longest])).request
    assert request.stop == (longest,)
    param, text = anthropic_refusal(message(stop_sequences=["a", longest + "y"]))
    assert param == "stop_sequences[1]"
    assert text == "stop_sequences.1: String should have at most 256 characters"


# --- JSON schemas ----------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """An object schema nested `depth` JSON levels deep (each object level is two)."""
    schema: dict[str, Any] = {"type": "string"}
    levels = 1
    while levels + 2 <= depth:
        schema = {"type": "object", "properties": {"a": schema}}
        levels += 2
    return schema


def huge(size: int) -> dict[str, Any]:
    """An object schema of exactly `size` bytes as compact JSON."""
    empty = len(orjson.dumps({"type": "object", "description": ""}))
    return {"type": "object", "description": "x" * (size - empty)}


def test_depth_counts_objects_and_arrays() -> None:
    assert not is_deeper_than("x", 0)
    assert not is_deeper_than({}, 1)
    assert is_deeper_than({}, 0)
    assert is_deeper_than({"a": [1, {"b": []}]}, 3)
    assert not is_deeper_than({"a": [1, {"b": []}]}, 4)
    deep: Any = []
    for _ in range(100_000):  # no recursion: no RecursionError however deep
        deep = [deep]
    assert is_deeper_than(deep, MAX_SCHEMA_DEPTH)


def test_a_schema_at_the_bounds_is_accepted() -> None:
    assert not is_deeper_than(nested(MAX_SCHEMA_DEPTH - 1), MAX_SCHEMA_DEPTH)
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": nested(63)}}
    assert openai_chat.parse(chat(response_format=fmt)).request.response_format is not None
    big = huge(MAX_SCHEMA_BYTES)
    tools = [{"type": "function", "function": {"name": "f", "parameters": big}}]
    assert openai_chat.parse(chat(tools=tools)).request.tools[0].parameters == big


def chat_format(schema: dict[str, Any]) -> dict[str, Any]:
    return chat(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    )


def chat_tool(schema: dict[str, Any]) -> dict[str, Any]:
    ok = {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}}
    bad = {"type": "function", "function": {"name": "bad", "parameters": schema}}
    return chat(tools=[ok, bad])


def responses_format(schema: dict[str, Any]) -> dict[str, Any]:
    return responses(text={"format": {"type": "json_schema", "name": "a", "schema": schema}})


def responses_tool(schema: dict[str, Any]) -> dict[str, Any]:
    return responses(tools=[{"type": "function", "name": "bad", "parameters": schema}])


OPENAI_SCHEMA_FIELDS = [
    (openai_chat.parse, chat_format, "response_format.json_schema.schema"),
    (openai_chat.parse, chat_tool, "tools[1].function.parameters"),
    (openai_responses.parse, responses_format, "text.format.schema"),
    (openai_responses.parse, responses_tool, "tools[0].parameters"),
]


@pytest.mark.parametrize(("parse", "make", "param"), OPENAI_SCHEMA_FIELDS)
def test_an_openai_schema_nested_too_deep_is_refused_naming_the_field(
    parse: Callable[[Any], Any], make: Callable[[dict[str, Any]], dict[str, Any]], param: str
) -> None:
    error = openai_refusal(parse, make(nested(MAX_SCHEMA_DEPTH + 1)))
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["message"] == (
        f"Invalid '{param}': the JSON schema is nested more than 64 levels deep."
    )


@pytest.mark.parametrize(("parse", "make", "param"), OPENAI_SCHEMA_FIELDS)
def test_an_openai_schema_too_large_is_refused_naming_the_field(
    parse: Callable[[Any], Any], make: Callable[[dict[str, Any]], dict[str, Any]], param: str
) -> None:
    error = openai_refusal(parse, make(huge(MAX_SCHEMA_BYTES + 1)))
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["message"] == (
        f"Invalid '{param}': the JSON schema is 65537 bytes; at most 65536 are allowed."
    )


def test_an_anthropic_tool_schema_over_the_bounds_is_refused_naming_the_field() -> None:
    ok = {"name": "ok", "input_schema": {"type": "object"}}
    for schema, reason in (
        (nested(MAX_SCHEMA_DEPTH + 1), "nested more than 64 levels deep"),
        (huge(MAX_SCHEMA_BYTES + 1), "at most 65536 are allowed"),
    ):
        bad = {"name": "bad", "input_schema": schema}
        param, text = anthropic_refusal(message(tools=[ok, bad]))
        assert param == "tools[1].input_schema"
        assert text.startswith("tools.1.input_schema: the JSON schema ")
        assert reason in text
        with pytest.raises(errors.InvalidRequest):  # count_tokens too
            anthropic_messages.parse_count(message(tools=[ok, bad]))


def test_a_thousand_levels_deep_schema_is_refused_not_crashed() -> None:
    deep: Any = {"type": "string"}
    for _ in range(500):
        deep = {"type": "array", "items": deep}  # 1 level each; orjson parses up to 1024
    error = openai_refusal(openai_chat.parse, chat_format(deep))
    assert error["param"] == "response_format.json_schema.schema"
