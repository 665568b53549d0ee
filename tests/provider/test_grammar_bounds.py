"""Grammar compilation is bounded in time and done once per schema: a schema the converter
would spend half a minute on is refused at its deadline, each schema's outcome (grammar or
refusal) is kept in a bounded LRU, and counting tokens (`max_tokens` 0) compiles nothing.
The engine tests run the real SmolLM2 model through llama.cpp."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from moonflower.errors import InvalidRequest
from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    ResponseFormat,
    SamplingParams,
    Started,
    Tool,
    ToolChoice,
    Usage,
)
from moonflower.model_files import resolve_model
from moonflower.provider.engines.grammar import (
    COMPILE_DEADLINE_S,
    CompiledGrammars,
    OutputConstraint,
    to_gbnf,
)
from moonflower.provider.engines.llama_cpp import LlamaCppEngine


def slow_schema(objects: int = 6, optional: int = 900) -> dict[str, Any]:
    """Within the coordinator's bounds (about 64 KB, 3 levels deep), yet the converter's work
    grows with the cube of an object's optional properties: about 30 s unbounded here."""
    return {
        "type": "object",
        "properties": {
            f"o{k}": {"type": "object", "properties": {f"p{i}": {} for i in range(optional)}}
            for k in range(objects)
        },
    }


def small_schema(name: str = "city") -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


def as_json(schema: dict[str, Any]) -> OutputConstraint:
    return OutputConstraint("json", schema, "response_format")


def test_a_schema_too_slow_to_convert_is_refused_at_its_deadline() -> None:
    t0 = time.monotonic()
    with pytest.raises(InvalidRequest) as refused:
        to_gbnf(as_json(slow_schema()), deadline_s=0.2)
    elapsed = time.monotonic() - t0
    assert refused.value.param == "response_format"
    assert "takes more than 0.2 s to turn into a grammar" in refused.value.message
    assert elapsed < 2.0  # unbounded, the same conversion takes about 30 s


def test_ordinary_schemas_convert_well_within_the_deadline() -> None:
    hundred_optional = {"type": "object", "properties": {f"p{i}": {} for i in range(100)}}
    t0 = time.monotonic()
    assert "root ::=" in to_gbnf(as_json(hundred_optional))
    assert time.monotonic() - t0 < COMPILE_DEADLINE_S / 4


def test_each_schema_is_converted_once_and_a_refusal_is_remembered_too() -> None:
    grammars: CompiledGrammars[str] = CompiledGrammars(lambda gbnf: gbnf, deadline_s=0.2)
    first = grammars.grammar(as_json(small_schema()))
    assert grammars.grammar(as_json(small_schema())) == first
    assert grammars.conversions == 1
    for _ in range(2):
        with pytest.raises(InvalidRequest, match=r"takes more than 0\.2 s"):
            grammars.grammar(as_json(slow_schema()))
    assert grammars.conversions == 2


def test_a_remembered_refusal_names_the_field_of_each_request() -> None:
    grammars: CompiledGrammars[str] = CompiledGrammars(lambda gbnf: gbnf, deadline_s=0.2)
    schema = slow_schema()
    with pytest.raises(InvalidRequest) as as_format:
        grammars.grammar(as_json(schema))
    tool = Tool("fill", None, schema)
    with pytest.raises(InvalidRequest) as as_tool:
        grammars.grammar(OutputConstraint("call", schema, "tools", (tool,)))
    assert as_format.value.param == "response_format"
    assert as_tool.value.param == "tools"
    assert "tool 'fill'" in as_tool.value.message
    assert grammars.conversions == 1


def test_the_engine_refusing_a_grammar_is_a_remembered_refusal() -> None:
    grammars: CompiledGrammars[str] = CompiledGrammars(lambda gbnf: None)
    for _ in range(2):
        with pytest.raises(InvalidRequest, match=r"llama\.cpp could not parse its grammar"):
            grammars.grammar(as_json(small_schema()))
    assert grammars.conversions == 1


def test_the_least_recently_used_schema_is_forgotten_first() -> None:
    grammars: CompiledGrammars[str] = CompiledGrammars(lambda gbnf: gbnf, max_entries=2)
    a, b, c = (as_json(small_schema(name)) for name in ("a", "b", "c"))
    grammars.grammar(a)
    grammars.grammar(b)
    grammars.grammar(a)  # a is now the most recent
    grammars.grammar(c)  # forgets b
    assert grammars.conversions == 3
    grammars.grammar(a)
    assert grammars.conversions == 3
    grammars.grammar(b)
    assert grammars.conversions == 4


def test_the_cache_holds_at_most_max_chars_of_grammar() -> None:
    size = len(to_gbnf(as_json(small_schema("a"))))
    grammars: CompiledGrammars[str] = CompiledGrammars(lambda gbnf: gbnf, max_chars=size)
    grammars.grammar(as_json(small_schema("a")))
    grammars.grammar(as_json(small_schema("b")))  # its grammar pushes a's out
    grammars.grammar(as_json(small_schema("a")))
    assert grammars.conversions == 3


def test_property_order_is_part_of_the_key() -> None:
    grammars: CompiledGrammars[str] = CompiledGrammars(lambda gbnf: gbnf)
    forward = {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"]}
    backward = {"type": "object", "properties": {"b": {}, "a": {}}, "required": ["a", "b"]}
    assert grammars.grammar(as_json(forward)) != grammars.grammar(as_json(backward))


# --- the engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine.load(resolve_model("default"))
    yield engine
    engine.close()


def forced_tool(schema: dict[str, Any], max_tokens: int | None) -> GenerationRequest:
    return GenerationRequest(
        model="m",
        messages=(Message("user", "Fill in the form."),),
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
        tools=(Tool("fill", "Fill the form.", schema),),
        tool_choice=ToolChoice("function", "fill"),
    )


def json_answer(schema: dict[str, Any]) -> GenerationRequest:
    """The schema constrains the output only: unlike a tool's, it is not in the prompt."""
    return GenerationRequest(
        model="m",
        messages=(Message("user", "Answer in JSON."),),
        max_tokens=4,
        sampling=SamplingParams(temperature=0.0),
        response_format=ResponseFormat("json_schema", schema=schema, name="answer"),
    )


def run(engine: LlamaCppEngine, request: GenerationRequest) -> list[GenerationEvent]:
    return list(engine.generate(request, threading.Event()))


def test_counting_tokens_compiles_no_grammar(smollm2: LlamaCppEngine) -> None:
    # One object of 900 optional properties: seconds to compile, yet its prompt fits.
    conversions = smollm2._grammars.conversions
    t0 = time.monotonic()
    events = run(smollm2, forced_tool(slow_schema(objects=1), max_tokens=0))
    elapsed = time.monotonic() - t0
    assert isinstance(events[0], Started) and events[0].prompt_tokens > 0
    assert events[1:] == [Finished("length", Usage(events[0].prompt_tokens, 0))]
    assert smollm2._grammars.conversions == conversions
    assert elapsed < COMPILE_DEADLINE_S  # compiling would have taken the whole deadline


def test_a_schema_too_slow_to_compile_fails_the_job_as_an_invalid_request(
    smollm2: LlamaCppEngine,
) -> None:
    conversions = smollm2._grammars.conversions
    t0 = time.monotonic()
    first = run(smollm2, json_answer(slow_schema()))
    first_s = time.monotonic() - t0
    t0 = time.monotonic()
    again = run(smollm2, json_answer(slow_schema()))
    again_s = time.monotonic() - t0
    for events in (first, again):
        assert len(events) == 1  # refused before Started: nothing was generated
        failure = events[0]
        assert isinstance(failure, Failed)
        assert (failure.code, failure.param) == ("invalid_request", "response_format")
        assert "to turn into a grammar" in failure.message
    assert COMPILE_DEADLINE_S <= first_s < COMPILE_DEADLINE_S + 5
    assert again_s < COMPILE_DEADLINE_S / 2  # remembered, not converted again
    assert smollm2._grammars.conversions == conversions + 1


def test_a_response_format_schema_compiles_once_for_many_jobs(smollm2: LlamaCppEngine) -> None:
    request = json_answer(small_schema("answer"))
    conversions = smollm2._grammars.conversions
    for _ in range(3):
        events = run(smollm2, request)
        assert isinstance(events[0], Started)
        assert isinstance(events[-1], Finished)
    assert smollm2._grammars.conversions == conversions + 1
