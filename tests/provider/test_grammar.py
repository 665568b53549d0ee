"""Which output a request constrains, the JSON Schema of each case, and its llama.cpp grammar
(numeric bounds included, checked through a regex reading of the grammar and the real model)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from moonflower.errors import InvalidRequest
from moonflower.generation import (
    Finished,
    GenerationRequest,
    Message,
    ResponseFormat,
    SamplingParams,
    TextDelta,
    Tool,
    ToolChoice,
)
from moonflower.model_files import resolve_model
from moonflower.provider.engines.grammar import (
    JSON_OBJECT_SCHEMA,
    OutputConstraint,
    choice_schema,
    nesting_depth,
    output_constraint,
    to_gbnf,
)
from moonflower.provider.engines.llama_cpp import LlamaCppEngine
from tests.provider.test_numeric_ranges import gbnf_regex, llama_cpp_parses

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


# Numeric bounds: spliced into the converter's grammar as exact rules

AGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["age"],
}


def grammar_regex(schema: dict[str, Any]) -> re.Pattern[str]:
    grammar = to_gbnf(json_constraint(schema))
    assert llama_cpp_parses(grammar)
    return gbnf_regex(grammar)


def test_integer_bounds_are_enforced_exactly() -> None:
    pattern = grammar_regex(AGE_SCHEMA)
    for age in range(-300, 300):
        assert (pattern.fullmatch(f'{{"age": {age}}}') is not None) == (0 <= age <= 150), age
    for text in ('{"age": 007}', '{"age": -0}', '{"age": 1.5}', '{"age": 1e2}'):
        assert pattern.fullmatch(text) is None


def test_bounds_are_enforced_wherever_the_number_is() -> None:
    schema = {
        "type": "object",
        "properties": {
            "scores": {"type": "array", "items": {"$ref": "#/$defs/Score"}, "maxItems": 2},
            "ratio": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1},
            "delta": {"anyOf": [{"type": "integer", "maximum": -1}, {"type": "string"}]},
        },
        "required": ["scores", "ratio", "delta"],
        "additionalProperties": False,
        "$defs": {"Score": {"type": "integer", "exclusiveMinimum": 0, "maximum": 10}},
    }
    pattern = grammar_regex(schema)
    valid = jsonschema.Draft202012Validator(schema).is_valid
    texts = [
        '{"scores": [1, 10], "ratio": 0.5, "delta": -3}',
        '{"scores": [], "ratio": null, "delta": "x"}',
        '{"scores": [0], "ratio": 0.5, "delta": -3}',
        '{"scores": [11], "ratio": 0.5, "delta": -3}',
        '{"scores": [3], "ratio": 1, "delta": -3}',
        '{"scores": [3], "ratio": -0.5, "delta": -3}',
        '{"scores": [3], "ratio": 0, "delta": 0}',
    ]
    for text in texts:
        assert (pattern.fullmatch(text) is not None) == valid(json.loads(text)), text


def test_a_choice_of_tools_keeps_each_tools_bounds() -> None:
    def counter(name: str, low: int, high: int) -> Tool:
        count = {"type": "integer", "minimum": low, "maximum": high}
        return Tool(name, None, {"type": "object", "properties": {"n": count}, "required": ["n"]})

    tools = (counter("small", 0, 9), counter("large", 100, 999))
    constraint = OutputConstraint("choice", choice_schema(tools), "tools", tools)
    pattern = gbnf_regex(to_gbnf(constraint))
    assert pattern.fullmatch('{"name": "small", "arguments": {"n": 5}}')
    assert pattern.fullmatch('{"name": "large", "arguments": {"n": 500}}')
    assert not pattern.fullmatch('{"name": "small", "arguments": {"n": 500}}')
    assert not pattern.fullmatch('{"name": "large", "arguments": {"n": 5}}')


def test_strings_that_look_like_placeholders_stay_strings() -> None:
    schema = {
        "type": "object",
        "properties": {
            "mf-range-0": {"const": "mf-range-0"},
            "n": {"type": "integer", "minimum": 1, "maximum": 2},
        },
        "required": ["mf-range-0", "n"],
        "additionalProperties": False,
    }
    pattern = grammar_regex(schema)
    assert pattern.fullmatch('{"mf-range-0": "mf-range-0", "n": 2}')
    assert not pattern.fullmatch('{"mf-range-0": "mf-range-0", "n": 3}')


def test_numeric_bounds_admitting_nothing_are_invalid_requests() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0.2, "maximum": 0.8}},
    }
    with pytest.raises(InvalidRequest, match="admits no value") as caught:
        to_gbnf(json_constraint(schema))
    assert caught.value.param == "response_format"


def test_many_bounded_numbers_keep_within_the_grammar_caps() -> None:
    def wide(low: int) -> dict[str, Any]:
        return {"type": "integer", "minimum": -(10**15) + low, "maximum": 10**15 - 3}

    shared = {"type": "object", "properties": {f"p{i}": wide(7) for i in range(500)}}
    grammar = to_gbnf(json_constraint(shared))
    plain = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(500)}}
    # One rule for the range all 500 share, not 500 copies of its 2,000 characters.
    assert len(grammar) < 2 * len(to_gbnf(json_constraint(plain)))
    assert nesting_depth(grammar) < 40
    distinct = [f"p{i}" for i in range(600)]
    each_own = {
        "type": "object",
        "properties": {name: wide(i) for i, name in enumerate(distinct)},
        "required": distinct,
    }
    with pytest.raises(InvalidRequest, match="more than 1000 repetitions"):
        to_gbnf(json_constraint(each_own))


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine.load(resolve_model("default"))
    yield engine
    engine.close()


PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "height": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 3},
    },
    "required": ["name", "age", "height"],
    "additionalProperties": False,
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize(
    ("schema", "ask"),
    [
        (AGE_SCHEMA, "How old is the oldest tortoise? Answer as JSON."),
        (PERSON_SCHEMA, "Invent a person."),
    ],
    ids=["age", "person"],
)
def test_sampled_output_validates(
    smollm2: LlamaCppEngine, schema: dict[str, Any], ask: str, seed: int
) -> None:
    generation = GenerationRequest(
        model="m",
        messages=(Message("user", ask),),
        response_format=ResponseFormat("json_schema", schema, "answer"),
        sampling=SamplingParams(temperature=1.0, seed=seed),
        max_tokens=80,
    )
    events = list(smollm2.generate(generation, threading.Event()))
    assert isinstance(events[-1], Finished)
    assert events[-1].reason == "stop"
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    jsonschema.validate(json.loads(text), schema)


def test_strings_hold_no_raw_control_characters() -> None:
    # JSON forbids a raw newline or tab inside a string; the converter's rules allowed them.
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string"}, "p": {"type": "string", "pattern": "^a.b$"}},
        "required": ["s", "p"],
        "additionalProperties": False,
    }
    pattern = grammar_regex(schema)
    assert pattern.fullmatch('{"s": "x\\ny\\t", "p": "a b"}')
    assert pattern.fullmatch('{"s": "é ü", "p": "a~b"}')
    for bad in ('{"s": "x\ny", "p": "a b"}', '{"s": "x\ty", "p": "a b"}', '{"s": "", "p": "a\nb"}'):
        assert not pattern.fullmatch(bad)
    assert not pattern.fullmatch('{"s": "", "p": "a"b"}')
    generic = to_gbnf(json_constraint(JSON_OBJECT_SCHEMA))
    assert llama_cpp_parses(generic)
    assert any(line.startswith(r'char ::= [^"\\\x00-\x1F] ') for line in generic.splitlines())
