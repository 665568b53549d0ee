"""The OpenAI Responses endpoint through the real coordinator and real provider agents on
loopback, with scripted engines: request parsing, the `response` object, the typed event
stream and errors, each checked against OpenAI's official OpenAPI document (and the
objects and events against the Open Responses specification too). These tests
say nothing about inference quality."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from moonflower import errors
from moonflower.coordinator.dialects import openai_responses
from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    OutputEvent,
    Started,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from tests.support.fake_engine import ScriptedEngine, counted
from tests.support.inprocess import InProcessNetwork, inprocess_network
from tests.support.openapi import assert_valid_openai
from tests.support.responses_conformance import assert_event_conforms, assert_response_conforms

MODEL = "fake-model"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}


@dataclass
class EventEngine(ScriptedEngine):
    """Plays exactly `events` after `Started`; with a `gate`, waits for it after the first."""

    events: list[OutputEvent] = field(default_factory=list)
    gate: threading.Event | None = None

    def generate(
        self, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        self.requests.append(request)
        yield Started(prompt_tokens=7)
        for index, event in enumerate(counted(self.events)):
            if index == 1 and self.gate is not None:
                assert self.gate.wait(10)
            if isinstance(event, Finished | Failed):
                self.endings.append(event)
            yield event


def finished(reason: str = "stop", completion_tokens: int = 3) -> Finished:
    return Finished(reason=reason, usage=Usage(7, completion_tokens))  # type: ignore[arg-type]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "Say hello.", **extra}


def parse_stream(raw: bytes) -> list[dict[str, Any]]:
    """Every SSE event's data, checking that its `event:` line names the data's type; the
    closing `data: [DONE]` is left out."""
    events = []
    for block in raw.decode().strip().split("\n\n"):
        if block == "data: [DONE]":
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def assert_valid_stream(events: list[dict[str, Any]]) -> None:
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        if event["type"] == "moonflower.receipt":  # ours: the provider's signed receipt
            assert set(event["receipt"]) >= {"receipt", "signature", "response_hash"}
            continue
        assert_event_conforms(event)  # OpenAI's document and Open Responses'


async def post(net: InProcessNetwork, payload: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
        return await client.post("/v1/responses", json=payload)


async def stream(net: InProcessNetwork, payload: dict[str, Any]) -> list[dict[str, Any]]:
    response = await post(net, {**payload, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content.endswith(b"\n\ndata: [DONE]\n\n")
    assert response.content.count(b"[DONE]") == 1
    events = parse_stream(response.content)
    assert_valid_stream(events)
    # The provider's signed receipt comes once, just before the terminal event (before the
    # `error` event of a failed stream, which Open Responses wants right before
    # `response.failed`); the tests below look at OpenAI's own events.
    receipts = [i for i, e in enumerate(events) if e["type"] == "moonflower.receipt"]
    is_failed = events[-1]["type"] == "response.failed"
    assert receipts == [len(events) - (3 if is_failed else 2)]
    return [e for e in events if e["type"] != "moonflower.receipt"]


async def test_a_string_input_gets_a_complete_response_object(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="hello there friend")
    async with inprocess_network(tmp_path, [engine]) as net:
        response = await post(
            net,
            body(instructions="Be brief.", metadata={"k": "v"}, temperature=0.5, store=True),
        )
    assert response.status_code == 200
    result = response.json()
    assert_response_conforms(result)
    assert result["id"].startswith("resp_")
    assert (result["object"], result["status"], result["model"]) == ("response", "completed", MODEL)
    assert result["completed_at"] >= result["created_at"]
    assert result["error"] is None and result["incomplete_details"] is None
    [message] = result["output"]
    assert message["id"].startswith("msg_")
    assert (message["type"], message["role"], message["status"]) == (
        "message",
        "assistant",
        "completed",
    )
    assert message["content"] == [
        {"type": "output_text", "text": "hello there friend", "annotations": [], "logprobs": []}
    ]
    assert result["output_text"] == "hello there friend"
    [ending] = engine.endings
    assert isinstance(ending, Finished)
    assert result["usage"] == {
        "input_tokens": ending.usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": ending.usage.prompt_tokens + 3,
    }
    assert result["instructions"] == "Be brief."
    assert result["metadata"] == {"k": "v"}
    assert result["temperature"] == 0.5
    assert result["store"] is False  # nothing is ever stored
    assert result["max_output_tokens"] == engine.requests[0].max_tokens  # the injected bound
    assert result["text"] == {"format": {"type": "text"}}
    assert (result["tools"], result["tool_choice"]) == ([], "auto")
    [request] = engine.requests
    assert request.messages == (Message("system", "Be brief."), Message("user", "Say hello."))
    assert request.sampling.temperature == 0.5
    assert response.headers["x-moonflower-job-id"]


async def test_stream_emits_the_typed_event_sequence(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="alpha beta gamma")
    async with inprocess_network(tmp_path, [engine]) as net:
        events = await stream(net, body())
    types = [e["type"] for e in events]
    deltas = types.count("response.output_text.delta")
    assert deltas >= 1
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created, final = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert final["id"] == created["id"] and final["status"] == "completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "alpha beta gamma"
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id for e in events[3:-2])
    assert events[-4]["text"] == events[-3]["part"]["text"] == text
    assert final["output"] == [events[-2]["item"]]
    assert final["output_text"] == text
    assert final["usage"]["output_tokens"] == 3


async def test_the_length_limit_makes_the_response_incomplete(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="one two three four five six")
    async with inprocess_network(tmp_path, [engine]) as net:
        whole = (await post(net, body(max_output_tokens=2))).json()
        events = await stream(net, body(max_output_tokens=2))
    assert_response_conforms(whole)
    for result in (whole, events[-1]["response"]):
        assert result["status"] == "incomplete"
        assert result["incomplete_details"] == {"reason": "max_output_tokens"}
        assert result["completed_at"] is None
        assert result["max_output_tokens"] == 2
        assert result["output"][0]["status"] == "incomplete"
        assert result["output_text"] == "one two"
    assert events[-1]["type"] == "response.incomplete"
    assert [r.max_tokens for r in engine.requests] == [2, 2]


async def test_reasoning_becomes_a_reasoning_item_before_the_message(tmp_path: Path) -> None:
    script = [TextDelta("<think>count the"), TextDelta(" letters</think>"), TextDelta("Five.")]
    engine = EventEngine(events=[*script, finished()])
    async with inprocess_network(tmp_path, [engine]) as net:
        whole = (await post(net, body())).json()
        events = await stream(net, body())
    assert_response_conforms(whole)
    for result in (whole, events[-1]["response"]):
        reasoning, message = result["output"]
        assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
        assert reasoning["summary"] == []
        assert reasoning["content"] == [{"type": "reasoning_text", "text": "count the letters"}]
        assert message["content"][0]["text"] == "Five."
        assert result["output_text"] == "Five."
    types = [e["type"] for e in events]
    assert types.index("response.reasoning_text.done") < types.index("response.output_text.delta")
    reasoned = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert reasoned == "count the letters"
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["reasoning", "message"]


async def test_an_answer_cut_short_while_reasoning_still_has_a_message(tmp_path: Path) -> None:
    engine = EventEngine(events=[TextDelta("<think>still thinking"), finished("length", 2)])
    async with inprocess_network(tmp_path, [engine]) as net:
        whole = (await post(net, body())).json()
        events = await stream(net, body())
    assert_response_conforms(whole)
    for result in (whole, events[-1]["response"]):
        assert result["status"] == "incomplete"
        reasoning, message = result["output"]
        assert (reasoning["type"], reasoning["status"]) == ("reasoning", "completed")
        assert reasoning["content"][0]["text"] == "still thinking"
        assert (message["type"], message["status"]) == ("message", "incomplete")
        assert message["content"][0]["text"] == result["output_text"] == ""


async def test_tool_calls_become_function_call_items(tmp_path: Path) -> None:
    calls = [
        ToolCallDelta(index=0, id="call_a", name="get_weather", arguments='{"city":'),
        ToolCallDelta(index=0, arguments=' "Paris"}'),
        ToolCallDelta(index=1, id="call_b", name="get_weather", arguments='{"city": "Rome"}'),
    ]
    engine = EventEngine(events=[*calls, finished("tool_calls")])
    payload = body(tools=[WEATHER_TOOL], tool_choice="required")
    async with inprocess_network(tmp_path, [engine]) as net:
        whole = (await post(net, payload)).json()
        events = await stream(net, payload)
    assert_response_conforms(whole)
    for result in (whole, events[-1]["response"]):
        assert result["status"] == "completed"
        assert [(i["type"], i["call_id"], i["arguments"]) for i in result["output"]] == [
            ("function_call", "call_a", '{"city": "Paris"}'),
            ("function_call", "call_b", '{"city": "Rome"}'),
        ]
        assert all(
            i["id"].startswith("fc_") and i["status"] == "completed" for i in result["output"]
        )
        assert result["output_text"] == ""
        assert result["tools"] == [WEATHER_TOOL]
        assert result["tool_choice"] == "required"
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"]) for e in done] == [
        ("get_weather", '{"city": "Paris"}'),
        ("get_weather", '{"city": "Rome"}'),
    ]
    first_args = [
        e["delta"]
        for e in events
        if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == 0
    ]
    assert first_args == ['{"city":', ' "Paris"}']
    request = engine.requests[0]
    assert [t.name for t in request.tools] == ["get_weather"]
    assert request.tools[0].parameters == WEATHER_TOOL["parameters"]
    assert request.tool_choice.mode == "required"


async def test_request_options_reach_the_generation_request(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="{}")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    forced = body(
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        top_p=0.9,
        max_output_tokens=50,
        text={"format": {"type": "json_schema", "name": "n", "schema": schema, "strict": True}},
        reasoning={"effort": "low"},
        parallel_tool_calls=False,
        some_future_field={"anything": 1},
    )
    async with inprocess_network(tmp_path, [engine]) as net:
        result = (await post(net, forced)).json()
        json_object = (await post(net, body(text={"format": {"type": "json_object"}}))).json()
    assert_response_conforms(result)
    request = engine.requests[0]
    assert (request.tool_choice.mode, request.tool_choice.name) == ("function", "get_weather")
    assert request.sampling.top_p == 0.9 and request.max_tokens == 50
    assert request.response_format is not None
    assert (request.response_format.kind, request.response_format.schema) == ("json_schema", schema)
    assert result["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert result["text"]["format"]["schema"] == schema
    assert result["reasoning"] == {"effort": "low", "summary": None}
    assert result["parallel_tool_calls"] is False
    assert json_object["text"] == {"format": {"type": "json_object"}}
    assert engine.requests[1].response_format is not None
    assert engine.requests[1].response_format.kind == "json_object"


async def test_input_items_become_the_conversation(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="It is sunny.")
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]
    async with inprocess_network(tmp_path, [engine]) as net:
        response = await post(net, body(input=items, tools=[WEATHER_TOOL]))
    assert response.status_code == 200
    assert engine.requests[0].messages == (
        Message("system", "Use tools."),
        Message("user", "Paris?"),
        Message("assistant", "Checking.", (ToolCall("c1", "get_weather", "{}"),)),
        Message("tool", "sunny", (), "c1", "get_weather"),
    )


async def test_a_chat_style_messages_body_is_served_too(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="hi")
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}
    async with inprocess_network(tmp_path, [engine]) as net:
        response = await post(net, payload)
    assert response.status_code == 200
    assert_response_conforms(response.json())
    assert response.json()["output_text"] == "hi"
    assert engine.requests[0].messages == (Message("user", "Hello"),)


async def test_text_is_streamed_as_it_is_generated(tmp_path: Path) -> None:
    gate = threading.Event()
    engine = EventEngine(events=[TextDelta("first"), TextDelta(" second"), finished()], gate=gate)
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
        client.stream("POST", "/v1/responses", json=body(stream=True)) as response,
    ):
        data = (
            orjson.loads(line[6:])
            async for line in response.aiter_lines()
            if line[:6] == "data: " and line != "data: [DONE]"
        )
        async with asyncio.timeout(10):  # a buffering server would send no delta yet
            async for event in data:
                if event["type"] == "response.output_text.delta":
                    break
        assert event["delta"] == "first"
        assert not engine.endings  # the engine is still waiting at the gate
        gate.set()
        rest = [event["type"] async for event in data]
    assert rest[-1] == "response.completed"


async def test_a_failure_mid_stream_ends_with_error_and_response_failed(tmp_path: Path) -> None:
    failure = Failed(code="engine_error", message="engine failed: RuntimeError")
    engine = EventEngine(events=[TextDelta("partial"), failure])
    async with inprocess_network(tmp_path, [engine]) as net:
        events = await stream(net, body())
    error, failed = events[-2:]
    assert error["type"] == "error"
    assert (error["code"], error["param"]) == ("provider_error", None)
    assert failed["type"] == "response.failed"
    result = failed["response"]
    assert result["status"] == "failed"
    assert result["error"] == {"code": "server_error", "message": error["message"]}
    [message] = result["output"]
    assert message["status"] == "incomplete"
    assert message["content"][0]["text"] == "partial"


async def test_a_failure_before_the_answer_is_an_openai_error(tmp_path: Path) -> None:
    engine = EventEngine(events=[TextDelta("partial"), Failed(code="overloaded", message="busy")])
    async with inprocess_network(tmp_path, [engine]) as net:
        response = await post(net, body())
    assert response.status_code == 429  # the provider turned the job away: try again later
    assert_valid_openai("ErrorResponse", response.json())
    assert response.headers["retry-after"]


IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
BAD_REQUESTS: list[tuple[Any, str | None]] = [
    ([1, 2], None),
    ({"input": "hi"}, "model"),
    ({"model": MODEL}, "input"),
    (body(input=42), "input"),
    (body(input=[]), "input"),
    (body(input=[{"role": "user", "content": "a"}, "text"]), "input[1]"),
    (
        body(input=[{"role": "user", "content": "a"}, {"role": "x", "content": "b"}]),
        "input[1].role",
    ),
    (body(input=[{"type": "item_reference", "id": "x"}]), "input[0].type"),
    (
        body(input=[{"role": "user", "content": [{"type": "input_image"}]}]),
        "input[0].content[0].type",
    ),
    (body(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]), "input[0].call_id"),
    (body(input=[{"type": "function_call_output", "call_id": "c"}]), "input[0].output"),
    (body(messages=[{"role": "user", "content": "x"}]), "messages"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    (body(max_output_tokens=0), "max_output_tokens"),
    (body(temperature=2.5), "temperature"),
    (body(top_p=1.5), "top_p"),
    (body(tools=[{"type": "web_search"}]), "tools[0].type"),
    (body(tools=[{"type": "function"}]), "tools[0].name"),
    (body(tools=[{**WEATHER_TOOL, "name": "bad name"}]), "tools[0].name"),
    (body(tool_choice="required"), "tool_choice"),
    (body(tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "x"}), "tool_choice.name"),
    (body(tools=[WEATHER_TOOL], tool_choice={"type": "file_search"}), "tool_choice.type"),
    (body(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema"),
    (body(text={"format": {"type": "json_schema", "schema": {}}}), "text.format.name"),
    (body(text={"format": {"type": "grammar"}}), "text.format.type"),
    (body(previous_response_id="resp_123"), "previous_response_id"),
    (body(conversation="conv_123"), "conversation"),
    (body(background=True), "background"),
    (body(stream="yes"), "stream"),
    (body(reasoning={"effort": "enormous"}), "reasoning.effort"),
    (body(input=[{"role": "user", "content": [IMAGE]}]), "input[0].content[0].type"),
    (
        body(input=[{"type": "function_call_output", "call_id": "c", "output": [IMAGE]}]),
        "input[0].output[0].type",
    ),
]


async def test_bad_requests_get_openai_errors_naming_the_field(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    async with inprocess_network(tmp_path, [engine]) as net:
        for payload, param in BAD_REQUESTS:
            response = await post(net, payload)
            assert response.status_code == 400, (payload, response.text)
            error = response.json()
            assert_valid_openai("ErrorResponse", error)
            assert error["error"]["type"] == "invalid_request_error"
            assert error["error"]["param"] == param, (payload, error)
            if param is not None:
                assert f"'{param}'" in error["error"]["message"] or param.startswith("messages")
    assert engine.requests == []


@pytest.mark.parametrize(
    ("headers", "model", "status", "code"),
    [
        ({"Authorization": "Bearer mf-wrong"}, MODEL, 401, "invalid_api_key"),
        (None, "no-such-model", 404, "model_not_found"),
    ],
)
async def test_authentication_and_model_errors(
    tmp_path: Path, headers: dict[str, str] | None, model: str, status: int, code: str
) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine()]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=headers or net.headers) as client,
    ):
        response = await client.post("/v1/responses", json=body(model=model, stream=True))
    assert response.status_code == status
    assert_valid_openai("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == code


def test_images_are_refused_as_content_a_text_model_cannot_read() -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        openai_responses.parse(body(input=[{"role": "user", "content": [IMAGE]}]))
    assert "'input_image' content is not supported" in refused.value.message
    assert "text only" in refused.value.message
