"""Which output a request constrains, the JSON Schema of each case, and its llama.cpp grammar."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from moonflower.errors import InvalidRequest
from moonflower.generation import (
    GenerationRequest,
    Message,
    ResponseFormat,
    Tool,
    ToolChoice,
)
from moonflower.provider.engines.grammar import (
    JSON_OBJECT_SCHEMA,
    OutputConstraint,
    choice_schema,
    nesting_depth,
    output_constraint,
    to_gbnf,
)

WEATHER = Tool(
    "get_weather",
    "Weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
        "required": ["city", "unit"],
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"]}},
    },
)
TIME = Tool(
    "get_time",
    None,
    {
        "type": "object",
        "properties": {"tz": {"$ref": "#/definitions/Unit"}},
        "required": ["tz"],
        "definitions": {"Unit": {"type": "string", "enum": ["utc", "local"]}},
    },
)


def request(**fields: Any) -> GenerationRequest:
    return GenerationRequest(model="m", messages=(Message("user", "hi"),), **fields)


def refused(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        output_constraint(request(**fields))
    return caught.value


def test_free_text_has_no_constraint() -> None:
    assert output_constraint(request()) is None
    assert output_constraint(request(tools=(WEATHER,))) is None
    assert output_constraint(request(tools=(WEATHER,), tool_choice=ToolChoice("none"))) is None


def test_a_named_or_single_required_tool_constrains_to_its_parameters() -> None:
    for choice in (ToolChoice("function", "get_weather"), ToolChoice("required")):
        tools = (TIME, WEATHER) if choice.mode == "function" else (WEATHER,)
        constraint = output_constraint(request(tools=tools, tool_choice=choice))
        assert constraint == OutputConstraint("call", WEATHER.parameters, "tools", (WEATHER,))


def test_a_forced_call_wins_over_a_response_format() -> None:
    constraint = output_constraint(
        request(
            tools=(WEATHER,),
            tool_choice=ToolChoice("required"),
            response_format=ResponseFormat("json_object"),
        )
    )
    assert constraint is not None
    assert constraint.kind == "call"


def test_response_formats() -> None:
    plain = output_constraint(request(response_format=ResponseFormat("json_object")))
    assert plain == OutputConstraint("json", JSON_OBJECT_SCHEMA, "response_format")
    schema = {"type": "array", "items": {"type": "integer"}}
    typed = output_constraint(request(response_format=ResponseFormat("json_schema", schema)))
    assert typed == OutputConstraint("json", schema, "response_format")
    missing = refused(response_format=ResponseFormat("json_schema"))
    assert missing.param == "response_format"


def test_forced_calls_that_cannot_be_made_are_refused() -> None:
    assert refused(tool_choice=ToolChoice("required")).param == "tool_choice"
    unknown = refused(tools=(WEATHER,), tool_choice=ToolChoice("function", "nope"))
    assert (unknown.param, "'nope'" in unknown.message) == ("tool_choice", True)
    scalar = Tool("f", None, {"type": "string"})
    not_object = refused(tools=(scalar,), tool_choice=ToolChoice("required"))
    assert not_object.param == "tools"


def test_a_choice_of_tools_accepts_exactly_a_call_to_one_of_them() -> None:
    schema = choice_schema((WEATHER, TIME))
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"name": "get_weather", "arguments": {"city": "x", "unit": "c"}})
    assert validator.is_valid({"name": "get_time", "arguments": {"tz": "utc"}})
    # Both tools define "Unit": each call still sees its own.
    assert not validator.is_valid({"name": "get_time", "arguments": {"tz": "c"}})
    assert not validator.is_valid(
        {"name": "get_weather", "arguments": {"city": "x", "unit": "utc"}}
    )
    assert not validator.is_valid({"name": "get_time", "arguments": {"tz": "utc"}, "x": 1})
    assert not validator.is_valid({"name": "other", "arguments": {}})
    assert WEATHER.parameters["$defs"] == {"Unit": {"type": "string", "enum": ["c", "f"]}}


def test_grammars_come_from_the_schema() -> None:
    constraint = output_constraint(
        request(tools=(WEATHER, TIME), tool_choice=ToolChoice("required"))
    )
    assert constraint is not None
    grammar = to_gbnf(constraint)
    assert "root ::=" in grammar
    for literal in ('\\"get_weather\\"', '\\"get_time\\"', '\\"utc\\"', '\\"f\\"'):
        assert literal in grammar


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"secret_value": {"not": {"const": "hunter2"}}}},
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/hunter2.json"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/hunter2"}}},
        {"type": "object", "properties": {"a": {"type": "hunter2"}}},
    ],
)
def test_schemas_the_converter_cannot_enforce_are_invalid_requests(schema: Any) -> None:
    for constraint in (
        OutputConstraint("json", schema, "response_format"),
        OutputConstraint("call", schema, "tools", (Tool("lookup", None, schema),)),
    ):
        with pytest.raises(InvalidRequest) as caught:
            to_gbnf(constraint)
        assert caught.value.param == constraint.param
        assert "hunter2" not in caught.value.message
        assert "constrained generation" in caught.value.message


def json_constraint(schema: dict[str, Any]) -> OutputConstraint:
    return OutputConstraint("json", schema, "response_format")


def test_huge_upper_bounds_are_dropped_rather_than_spelled_out() -> None:
    huge = 10**9
    schema = {
        "type": "object",
        "properties": {
            "enum": {"type": "string", "maxLength": huge},  # a property named like a keyword
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": huge},
            "code": {"type": "string", "maxLength": 3},
        },
    }
    grammar = to_gbnf(json_constraint(schema))
    assert len(grammar) < 5_000
    assert nesting_depth(grammar) < 10
    assert "(char (char (char)?)?)?" in grammar  # small bounds are still enforced


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 100_000},
        {"type": "array", "items": {"type": "integer"}, "minItems": 5_000},
        {"type": "string", "pattern": "^a{2,50000}$"},
        {"type": "string", "pattern": "^a{99999999999999999999}$"},
    ],
)
def test_huge_lower_bounds_and_quantifiers_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="more than 1000 repetitions") as caught:
        to_gbnf(json_constraint(schema))
    assert caught.value.param == "response_format"


def test_nesting_depth_ignores_literals_and_classes() -> None:
    assert nesting_depth('root ::= "((" (a (b "\\")") [()])') == 2
    assert nesting_depth("root ::= a") == 0
