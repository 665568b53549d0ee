"""The llama.cpp engine with the real SmolLM2: forced tool calls and structured output are
grammar-constrained (so even a 135M model's output parses and validates), tool turns reach
the prompt, free text with `<tool_call>` blocks becomes calls, and logprobs are the model's."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    ResponseFormat,
    SamplingParams,
    Started,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from moonflower.model_files import resolve_model
from moonflower.provider.engines import grammar
from moonflower.provider.engines.llama_cpp import LlamaCppEngine

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0.0)
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = Tool("get_weather", "Get the current weather in a city", WEATHER_SCHEMA)
TIME = Tool(
    "get_time",
    "Get the local time in a time zone",
    {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["utc", "local"]}},
        "required": ["zone"],
        "additionalProperties": False,
    },
)
ASK_WEATHER = (Message("user", "What's the weather like in Paris today?"),)


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine.load(resolve_model("default"))
    yield engine
    engine.close()


def run(engine: LlamaCppEngine, **fields: Any) -> list[GenerationEvent]:
    fields.setdefault("messages", ASK_WEATHER)
    fields.setdefault("sampling", GREEDY)
    fields.setdefault("max_tokens", 64)
    return list(engine.generate(GenerationRequest(model="m", **fields), threading.Event()))


def ending(events: list[GenerationEvent]) -> Finished:
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Finished | Failed) for e in events) == 1
    return events[-1]


def calls_of(events: list[GenerationEvent]) -> list[tuple[str, str, str]]:
    """Each call as (id, name, joined arguments); checks ids and names come first, once."""
    calls: dict[int, list[str]] = {}
    for event in events:
        if not isinstance(event, ToolCallDelta):
            continue
        if event.index not in calls:
            assert event.id is not None
            assert event.name is not None
            calls[event.index] = [event.id, event.name, event.arguments]
        else:
            assert (event.id, event.name) == (None, None)
            calls[event.index][2] += event.arguments
    return [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# Forced calls


@pytest.mark.parametrize(
    "sampling", [GREEDY, SamplingParams(temperature=1.0, seed=1), SamplingParams(seed=2)]
)
def test_a_named_tool_call_streams_arguments_that_validate(
    smollm2: LlamaCppEngine, sampling: SamplingParams
) -> None:
    events = run(
        smollm2,
        tools=(TIME, WEATHER),
        tool_choice=ToolChoice("function", "get_weather"),
        sampling=sampling,
    )
    end = ending(events)
    assert end.reason == "tool_calls"
    first = events[1]
    assert isinstance(first, ToolCallDelta)
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "")
    assert first.id is not None and first.id.startswith("call_")
    assert all(isinstance(e, ToolCallDelta) for e in events[1:-1])
    assert sum(1 for e in events if isinstance(e, ToolCallDelta)) > 2  # streamed, not whole
    [(_, name, arguments)] = calls_of(events)
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_SCHEMA)
    assert 0 < end.usage.completion_tokens < 64


@pytest.mark.parametrize("seed", [3, 4])
def test_required_with_several_tools_makes_one_valid_call(
    smollm2: LlamaCppEngine, seed: int
) -> None:
    events = run(
        smollm2,
        tools=(WEATHER, TIME),
        tool_choice=ToolChoice("required"),
        sampling=SamplingParams(seed=seed),
    )
    assert ending(events).reason == "tool_calls"
    assert text_of(events) == ""
    [(_, name, arguments)] = calls_of(events)
    schema = {t.name: t.parameters for t in (WEATHER, TIME)}[name]
    jsonschema.validate(json.loads(arguments), schema)


def test_a_forced_call_ignores_stop_sequences(smollm2: LlamaCppEngine) -> None:
    events = run(smollm2, tools=(WEATHER,), tool_choice=ToolChoice("required"), stop=('"', "city"))
    assert ending(events).reason == "tool_calls"
    jsonschema.validate(json.loads(calls_of(events)[0][2]), WEATHER_SCHEMA)


def test_a_schema_that_cannot_be_enforced_fails_before_starting(
    smollm2: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = Tool("odd", None, {"type": "object", "properties": {"a": {"not": {}}}})
    events = run(smollm2, tools=(odd,), tool_choice=ToolChoice("required"))
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert (events[0].code, events[0].param) == ("invalid_request", "tools")
    # A grammar llama.cpp itself cannot parse is refused too, not handed to its sampler.
    monkeypatch.setattr(grammar, "_convert", lambda schema, deadline_s: "root ::= missing-rule")
    unseen = {"type": "object", "properties": {"never-compiled-before": {"type": "string"}}}
    events = run(smollm2, response_format=ResponseFormat("json_schema", unseen, "unseen"))
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert (events[0].code, events[0].param) == ("invalid_request", "response_format")


# Structured output


def test_json_object_output_is_a_json_object(smollm2: LlamaCppEngine) -> None:
    ask = (Message("user", 'Give me a JSON object with the key "answer": the capital of France.'),)
    events = run(smollm2, messages=ask, response_format=ResponseFormat("json_object"))
    assert ending(events).reason == "stop"
    assert isinstance(json.loads(text_of(events)), dict)


def test_json_schema_output_validates(smollm2: LlamaCppEngine) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    ask = (Message("user", "Describe a person as JSON."),)
    events = run(
        smollm2, messages=ask, response_format=ResponseFormat("json_schema", schema, "person")
    )
    assert ending(events).reason == "stop"
    jsonschema.validate(json.loads(text_of(events)), schema)


def test_a_huge_length_bound_neither_crashes_llama_cpp_nor_fails(smollm2: LlamaCppEngine) -> None:
    # Spelled out, maxLength 100000 nests 100000 groups: llama.cpp's parser overflows its
    # stack on that (a segfault would take the whole provider down).
    schema = {"type": "object", "properties": {"story": {"type": "string", "maxLength": 100_000}}}
    ask = (Message("user", "Tell a story as JSON."),)
    events = run(smollm2, messages=ask, response_format=ResponseFormat("json_schema", schema))
    assert ending(events).usage.completion_tokens > 0


# Tool turns and free tool calls


def test_a_previous_call_and_its_result_reach_the_prompt(smollm2: LlamaCppEngine) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "c"}')
    messages = (
        *ASK_WEATHER,
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "22 degrees and sunny", tool_call_id="call_1", name="get_weather"),
    )
    request = GenerationRequest(model="m", messages=messages, tools=(WEATHER,), max_tokens=16)
    prompt = smollm2.render_prompt(request)
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}' in (
        prompt
    )
    assert "22 degrees and sunny" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    events = run(smollm2, messages=messages, tools=(WEATHER,), max_tokens=16)
    assert ending(events).usage.completion_tokens > 0
    assert ending(events).usage.prompt_tokens == len(smollm2.prompt_tokens(request))


def test_tool_call_blocks_in_free_text_become_calls(smollm2: LlamaCppEngine) -> None:
    def block(city: str) -> str:
        return (
            f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}</tool_call>'
        )

    # Three calls in a row make the next one the likeliest continuation, even for SmolLM2.
    prompt = "".join(f"{block(city)}\n" for city in ("Paris", "Oslo", "Rome"))
    events = run(smollm2, prompt=prompt, messages=(), tools=(WEATHER,), stop=("\n",))
    assert ending(events).reason == "tool_calls"
    [(call_id, name, arguments)] = calls_of(events)
    assert call_id.startswith("call_")
    assert name == "get_weather"
    assert set(json.loads(arguments)) == {"city"}
    assert text_of(events) == ""


def test_tool_choice_none_keeps_tools_out_of_the_prompt(smollm2: LlamaCppEngine) -> None:
    offered = GenerationRequest(model="m", messages=ASK_WEATHER, tools=(WEATHER,))
    withheld = GenerationRequest(
        model="m", messages=ASK_WEATHER, tools=(WEATHER,), tool_choice=ToolChoice("none")
    )
    assert "get_weather" in smollm2.render_prompt(offered)
    assert smollm2.render_prompt(withheld) == smollm2.render_prompt(
        GenerationRequest(model="m", messages=ASK_WEATHER)
    )


# Logprobs


def test_logprobs_cover_every_token_and_greedy_picks_the_top(smollm2: LlamaCppEngine) -> None:
    events = run(smollm2, logprobs=5, max_tokens=24)
    end = ending(events)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    logprobs = [lp for d in deltas for lp in d.logprobs]
    assert len(logprobs) == end.usage.completion_tokens == 24
    assert "".join(lp.token for lp in logprobs) == text_of(events)
    for lp in logprobs:
        assert lp.logprob <= 0
        assert len(lp.top) == 5
        assert lp.top[0] == (lp.token, lp.logprob)
        assert [value for _, value in lp.top] == sorted((v for _, v in lp.top), reverse=True)
    assert all(d.logprobs for d in deltas)


def test_logprobs_match_llama_cpp_python(smollm2: LlamaCppEngine) -> None:
    from llama_cpp import Llama

    request = GenerationRequest(
        model="m", messages=ASK_WEATHER, max_tokens=6, sampling=GREEDY, logprobs=3
    )
    events = run(smollm2, messages=ASK_WEATHER, max_tokens=6, logprobs=3)
    ours = [lp for e in events if isinstance(e, TextDelta) for lp in e.logprobs]
    reference = Llama(
        str(resolve_model("default").path),
        n_ctx=512,
        n_threads=os.cpu_count(),
        logits_all=True,
        verbose=False,
    )
    try:
        expected = reference.create_completion(
            prompt=smollm2.prompt_tokens(request),
            max_tokens=6,
            temperature=0.0,
            repeat_penalty=1.0,
            logprobs=3,
        )["choices"][0]["logprobs"]
    finally:
        reference.close()
    assert [lp.token for lp in ours] == expected["tokens"]
    for mine, value, top in zip(
        ours, expected["token_logprobs"], expected["top_logprobs"], strict=True
    ):
        assert mine.logprob == pytest.approx(value, abs=1e-3)
        assert dict(mine.top) == pytest.approx({k: float(v) for k, v in top.items()}, abs=1e-3)


def test_no_logprobs_unless_asked_and_at_most_twenty(smollm2: LlamaCppEngine) -> None:
    plain = run(smollm2, max_tokens=4)
    assert all(not e.logprobs for e in plain if isinstance(e, TextDelta))
    capped = run(smollm2, max_tokens=2, logprobs=50)
    chosen_only = run(smollm2, max_tokens=2, logprobs=0)
    for events, width in ((capped, 20), (chosen_only, 0)):
        logprobs = [lp for e in events if isinstance(e, TextDelta) for lp in e.logprobs]
        assert len(logprobs) == 2
        assert all(len(lp.top) == width for lp in logprobs)
