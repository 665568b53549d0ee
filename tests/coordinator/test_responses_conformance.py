"""The Responses renderer's objects conform to both OpenAI's OpenAPI document and the Open
Responses specification: the `response` object in every status (in progress, completed,
incomplete, failed), every streamed event kind, and the sampling values it reports (the
ones the job ran with, never the request's nulls). No model: the renderer is fed the
output events a job would produce."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import orjson
import pytest

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.dialects import dialect, openai_responses
from moonflower.coordinator.dialects.openai_responses_render import (
    ResponsesRenderer,
    stream_error_event,
)
from moonflower.generation import (
    Failed,
    Finished,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from tests.support.open_responses import required_fields
from tests.support.responses_conformance import (
    EVENT_SCHEMAS,
    RECEIPT_EVENT,
    assert_event_conforms,
    assert_response_conforms,
)

MODEL = "m"
USED = SamplingParams(temperature=0.2, top_p=0.9)
"""What a job runs with after the model's recommended defaults were filled in."""
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
RECEIPT = Receipted(
    job_id="job", provider_id="p", receipt="r", signature="s", response_hash="h", cost_usd="0"
)
LOGPROB = TokenLogprob(token="Hi", logprob=-0.5, top=(("Hi", -0.5), ("Hey", -1.5)))


def finished(reason: Literal["stop", "length", "tool_calls"] = "stop") -> Finished:
    return Finished(reason=reason, usage=Usage(7, 3))


SCRIPTS: dict[str, list[OutputEvent]] = {
    "text": [TextDelta("Hello"), TextDelta(" there", logprobs=(LOGPROB,)), RECEIPT, finished()],
    "reasoning": [ReasoningDelta("count"), TextDelta("Five."), RECEIPT, finished()],
    "tool_call": [
        ToolCallDelta(index=0, id="call_a", name="get_weather", arguments='{"city":'),
        ToolCallDelta(index=0, arguments=' "Paris"}'),
        RECEIPT,
        finished("tool_calls"),
    ],
    "incomplete": [TextDelta("one two"), RECEIPT, finished("length")],
    "failed": [
        TextDelta("partial"),
        RECEIPT,
        Failed(code="engine_error", message="engine failed"),
    ],
}
STATUS = {
    "text": "completed",
    "reasoning": "completed",
    "tool_call": "completed",
    "incomplete": "incomplete",
    "failed": "failed",
}


def renderer(
    payload: dict[str, Any] | None = None, sampling: SamplingParams = USED
) -> ResponsesRenderer:
    call = openai_responses.parse({"model": MODEL, "input": "Say hello.", **(payload or {})})
    return ResponsesRenderer(model=MODEL, max_output_tokens=16, sampling=sampling, echo=call.echo)


async def source(script: Sequence[OutputEvent]) -> AsyncIterator[OutputEvent]:
    for event in script:
        yield event


async def whole(script: Sequence[OutputEvent], payload: dict[str, Any] | None = None) -> Any:
    assert isinstance(script[-1], Finished)
    return await dialect.whole(renderer(payload), source(script))


async def streamed(
    script: Sequence[OutputEvent], payload: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    stream = sse.framed(renderer(payload).stream(source(script)), sse.DONE)
    frames = [frame async for frame in stream]
    assert frames[-1] == b"data: [DONE]\n\n"  # Open Responses' end of stream
    return [parse_frame(frame) for frame in frames[:-1]]


def parse_frame(frame: bytes) -> dict[str, Any]:
    lines = dict(line.split(": ", 1) for line in frame.decode().strip().split("\n"))
    data: dict[str, Any] = orjson.loads(lines["data"])
    assert lines["event"] == data["type"]
    return data


def test_every_field_open_responses_requires_is_in_every_status() -> None:
    fields = set(required_fields("ResponseResource"))
    assert {"temperature", "top_p", "presence_penalty", "safety_identifier"} <= fields
    for status in ("in_progress", "completed", "incomplete", "failed"):
        error = {"code": "server_error", "message": "x"} if status == "failed" else None
        body = renderer().body(status, usage=Usage(1, 1), error=error)
        assert fields <= set(body), fields - set(body)
        assert_response_conforms(body)
        assert_response_conforms(renderer().body(status, error=error))  # usage still null


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "failed"])
async def test_a_whole_response_conforms(script: str) -> None:
    body = await whole(SCRIPTS[script])
    assert_response_conforms(body)
    assert body["status"] == STATUS[script]
    assert body["usage"]["total_tokens"] == 10


@pytest.mark.parametrize("script", SCRIPTS)
async def test_every_streamed_event_conforms(script: str) -> None:
    events = await streamed(SCRIPTS[script])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        if event["type"] != RECEIPT_EVENT:
            assert_event_conforms(event)
    assert events[-1]["type"] == f"response.{STATUS[script]}"
    assert events[-1]["response"]["status"] == STATUS[script]


async def test_the_scripts_cover_every_event_kind_sent() -> None:
    seen = {e["type"] for script in SCRIPTS.values() for e in await streamed(script)}
    assert seen == {*EVENT_SCHEMAS, RECEIPT_EVENT}


def test_an_error_event_before_the_response_conforms() -> None:
    exc = errors.InvalidRequest("Missing required parameter: 'input'.", param="input")
    frame, done = (stream_error_event(exc).encode() + sse.DONE).split(b"\n\n", 1)
    assert done == b"data: [DONE]\n\n"
    event = parse_frame(frame)
    assert_event_conforms(event)
    assert event["error"] == {
        "type": "invalid_request_error",
        "code": event["code"],
        "message": event["message"],
        "param": "input",
    }


async def test_a_failed_stream_reports_the_error_both_ways() -> None:
    events = await streamed(SCRIPTS["failed"])
    receipt, error, failed = events[-3:]
    # Open Responses: `response.failed` comes right after `error`, so the receipt goes first.
    assert receipt["type"] == RECEIPT_EVENT
    assert error["type"] == "error" and failed["type"] == "response.failed"
    assert error["error"]["message"] == error["message"] == failed["response"]["error"]["message"]
    assert failed["response"]["usage"] is None


def test_a_response_reports_the_sampling_the_job_ran_with() -> None:
    body = renderer({"temperature": None}).body("completed")
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.0, 0.0)
    used = SamplingParams(temperature=0.7, top_p=0.9, presence_penalty=0.5, frequency_penalty=-1)
    body = renderer(sampling=used).body("completed")
    assert (body["temperature"], body["top_p"]) == (0.7, 0.9)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -1)


def test_knobs_left_unset_everywhere_are_the_engine_defaults_never_null() -> None:
    body = renderer(sampling=SamplingParams()).body("in_progress")
    assert (body["temperature"], body["top_p"]) == (1.0, 1.0)
    assert (body["presence_penalty"], body["frequency_penalty"], body["top_logprobs"]) == (0, 0, 0)
    assert_response_conforms(body)


def test_request_only_settings_are_echoed() -> None:
    payload = {
        "safety_identifier": "user-hash",
        "prompt_cache_key": "greetings",
        "top_logprobs": 3,
        "include": ["message.output_text.logprobs"],
        "max_tool_calls": 2,
        "user": "u-1",
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "text"}, "verbosity": "low"},
    }
    body = renderer(payload).body("completed", usage=Usage(1, 1))
    assert_response_conforms(body)
    assert (body["safety_identifier"], body["prompt_cache_key"]) == ("user-hash", "greetings")
    assert (body["top_logprobs"], body["max_tool_calls"], body["user"]) == (3, 2, "u-1")
    assert body["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["tools"] == [{**WEATHER_TOOL, "description": None, "strict": None}]
    unset = renderer().body("completed")
    assert (unset["safety_identifier"], unset["prompt_cache_key"], unset["user"]) == (
        None,
        None,
        None,
    )
    assert unset["reasoning"] == {"effort": None, "summary": None}


async def test_requested_logprobs_reach_the_output_text() -> None:
    call = openai_responses.parse(
        {
            "model": MODEL,
            "input": "Hi",
            "top_logprobs": 2,
            "include": ["message.output_text.logprobs"],
        }
    )
    assert call.request.logprobs == 2
    assert openai_responses.parse({"model": MODEL, "input": "Hi"}).request.logprobs is None
    [message] = (await whole(SCRIPTS["text"]))["output"]
    [logprob] = message["content"][0]["logprobs"]
    assert logprob == {
        "token": "Hi",
        "logprob": -0.5,
        "bytes": list(b"Hi"),
        "top_logprobs": [
            {"token": "Hi", "logprob": -0.5, "bytes": list(b"Hi")},
            {"token": "Hey", "logprob": -1.5, "bytes": list(b"Hey")},
        ],
    }


def test_penalties_reach_the_generation_request() -> None:
    call = openai_responses.parse(
        {"model": MODEL, "input": "Hi", "presence_penalty": 0.5, "frequency_penalty": -2}
    )
    assert (call.request.sampling.presence_penalty, call.request.sampling.frequency_penalty) == (
        0.5,
        -2,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("top_logprobs", 21),
        ("top_logprobs", -1),
        ("safety_identifier", "x" * 65),
        ("prompt_cache_key", "x" * 65),
        ("max_tool_calls", -1),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        openai_responses.parse({"model": MODEL, "input": "Hi", field: value})
    assert caught.value.param == field


def test_a_structured_output_format_is_echoed_as_given() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    text = {"format": {"type": "json_schema", "name": "n", "schema": schema}}
    body = renderer({"text": text}).body("completed")
    assert_response_conforms(body)
    assert body["text"] == {
        "format": {"type": "json_schema", "name": "n", "schema": schema, "strict": False}
    }
