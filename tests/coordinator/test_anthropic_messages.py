"""The Anthropic Messages dialect through the real coordinator and real provider agents with
scripted engines: body and stream shapes (validated against Anthropic's official document),
event order, block order, stop reasons, the request the engine receives, token counting and
errors. These tests say nothing about inference."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    SamplingParams,
    Started,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from moonflower.ledger import jobs as job_ledger
from tests.support.fake_engine import ScriptedEngine, counted
from tests.support.inprocess import InProcessNetwork, inprocess_network
from tests.support.openapi import assert_valid_anthropic

MODEL = "fake-model"
USER = [{"role": "user", "content": "hi"}]
WEATHER_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "input_schema": WEATHER_SCHEMA,
}
ARGUMENT_PIECES = ['{"city', '": "Par', 'is"}']


@dataclass
class EventEngine(ScriptedEngine):
    """Yields `Started`, then exactly `outputs` (the last one terminal). With `max_tokens=0`
    it ends at once, as the llama.cpp engine does."""

    outputs: list[GenerationEvent] = field(default_factory=list)
    prompt_tokens: int = 7

    def generate(
        self, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        self.requests.append(request)
        yield Started(prompt_tokens=self.prompt_tokens)
        if request.max_tokens == 0:
            yield Finished(reason="length", usage=Usage(self.prompt_tokens, 0))
            return
        yield from counted(self.outputs)


def finished(reason: str = "stop", tokens: int = 5, stop: str | None = None) -> Finished:
    return Finished(reason=reason, usage=Usage(7, tokens), stop_sequence=stop)  # type: ignore[arg-type]


def thinking_tool_engine() -> EventEngine:
    """Reasoning (in think tags, as models write it), text, then one tool call."""
    return EventEngine(
        outputs=[
            TextDelta("<think>The user wants"),
            TextDelta(" weather.</think>"),
            TextDelta("Let me check."),
            ToolCallDelta(0, "", id="call_1", name="get_weather"),
            *(ToolCallDelta(0, piece) for piece in ARGUMENT_PIECES),
            finished("tool_calls", 12),
        ]
    )


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": USER, **extra}


def client(net: InProcessNetwork, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=net.base_url, headers={**net.headers, **headers})


RECEIPT_FIELDS = {"job_id", "provider_id", "receipt", "signature", "response_hash", "cost_usd"}


def sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs, each checked against the official document."""
    events = []
    for frame in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        name, data = lines["event"], json.loads(lines["data"])
        if name == "ping":
            assert data == {"type": "ping"}
        elif name == "moonflower_receipt":
            assert set(data["receipt"]) == RECEIPT_FIELDS
        elif name == "error":
            assert_valid_anthropic("ErrorResponse", data)
        else:
            assert data["type"] == name
            assert_valid_anthropic("MessageStreamEvent", data)
        events.append((name, data))
    return events


def assemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Rebuild the message from its events, asserting Anthropic's event grammar on the way:
    one message_start first, blocks opened in index order and closed before the next opens,
    deltas only to the open block and of its kind, message_delta then message_stop last."""
    names = [name for name, _ in events]
    if "moonflower_receipt" in names:  # the provider's receipt sits just before the end
        assert names[-2] == "moonflower_receipt"
        events = [e for e in events if e[0] != "moonflower_receipt"]
        names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    message = events[0][1]["message"]
    assert message["content"] == [] and message["stop_reason"] is None
    open_index: int | None = None
    partial_json: dict[int, str] = {}
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(message["content"])
            open_index = data["index"]
            message["content"].append(data["content_block"])
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block, delta = message["content"][data["index"]], data["delta"]
            kind = {"text_delta": "text", "thinking_delta": "thinking"}.get(delta["type"])
            if kind is not None:
                assert block["type"] == kind
                block[kind] += delta[kind]
            elif delta["type"] == "signature_delta":
                assert block["type"] == "thinking"
                block["signature"] = delta["signature"]
            else:
                assert block["type"] == "tool_use" and delta["type"] == "input_json_delta"
                partial_json[data["index"]] = (
                    partial_json.get(data["index"], "") + (delta["partial_json"])
                )
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            assert name == "ping"
    assert open_index is None
    for index, text in partial_json.items():
        message["content"][index]["input"] = json.loads(text)
    delta = events[-2][1]
    message.update(stop_reason=delta["delta"]["stop_reason"])
    message.update(stop_sequence=delta["delta"]["stop_sequence"])
    message["usage"].update(delta["usage"])
    return dict(message)


async def create(http: httpx.AsyncClient, **extra: Any) -> dict[str, Any]:
    response = await http.post("/v1/messages", json=body(**extra))
    assert response.status_code == 200, response.text
    message: dict[str, Any] = response.json()
    assert_valid_anthropic("Message", message)
    return message


async def stream(http: httpx.AsyncClient, **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    response = await http.post("/v1/messages", json=body(stream=True, **extra))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse(response.text)


def without_ids(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "id"}


async def test_a_whole_message_and_its_stream_have_anthropics_shapes(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="one two three")
    async with inprocess_network(tmp_path, [engine]) as net, client(net) as http:
        whole = await create(http)
        events = await stream(http)
    assert whole["id"].startswith("msg_")
    assert (whole["type"], whole["role"], whole["model"]) == ("message", "assistant", MODEL)
    assert whole["content"] == [{"type": "text", "text": "one two three", "citations": None}]
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("end_turn", None)
    assert whole["usage"]["input_tokens"] == 1
    assert whole["usage"]["output_tokens"] == 3
    assert whole["usage"]["cache_creation_input_tokens"] == 0
    assert whole["usage"]["cache_read_input_tokens"] == 0
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-4]) == {"content_block_delta"}
    assert names[-4:] == [
        "content_block_stop",
        "message_delta",
        "moonflower_receipt",
        "message_stop",
    ]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 1
    assert events[-3][1]["usage"]["output_tokens"] == 3
    assert without_ids(assemble(events)) == without_ids(whole)


async def test_thinking_text_and_tool_use_come_as_blocks_in_order(tmp_path: Path) -> None:
    engine = thinking_tool_engine()
    thinking = {"type": "enabled", "budget_tokens": 1024}
    extra: dict[str, Any] = {"max_tokens": 2048, "thinking": thinking, "tools": [WEATHER]}
    async with inprocess_network(tmp_path, [engine]) as net, client(net) as http:
        whole = await create(http, **extra)
        events = await stream(http, **extra)
    expected = [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": ""},
        {"type": "text", "text": "Let me check.", "citations": None},
        {
            "type": "tool_use",
            "id": "call_1",
            "name": "get_weather",
            "input": {"city": "Paris"},
            "caller": {"type": "direct"},
        },
    ]
    assert whole["content"] == expected
    assert whole["stop_reason"] == "tool_use"
    streamed = assemble(events)
    assert streamed["content"] == expected
    assert streamed["stop_reason"] == "tool_use"
    # Anthropic ends a thinking block with its signature, and streams tool input as JSON text.
    stop_thinking = events.index(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    assert events[stop_thinking - 1][1]["delta"]["type"] == "signature_delta"
    pieces = [d["delta"]["partial_json"] for n, d in events if d.get("index") == 2 and "delta" in d]
    assert pieces == ARGUMENT_PIECES


async def test_reasoning_is_not_shown_unless_thinking_is_enabled(tmp_path: Path) -> None:
    engine = thinking_tool_engine()
    async with inprocess_network(tmp_path, [engine]) as net, client(net) as http:
        whole = await create(http, tools=[WEATHER])
        disabled = await create(http, tools=[WEATHER], thinking={"type": "disabled"})
        events = await stream(http, tools=[WEATHER])
    for message in (whole, disabled, assemble(events)):
        assert [block["type"] for block in message["content"]] == ["text", "tool_use"]
        assert message["usage"]["output_tokens"] == 12


@pytest.mark.parametrize("is_stream", [False, True])
async def test_stop_reasons_say_why_the_generation_ended(tmp_path: Path, is_stream: bool) -> None:
    engine = EventEngine(outputs=[TextDelta("a b"), finished("stop", 2, stop="END")])
    scripted = ScriptedEngine(model_id="long", script="w " * 40)
    async with inprocess_network(tmp_path, [engine, scripted]) as net, client(net) as http:

        async def message(**extra: Any) -> dict[str, Any]:
            return (
                assemble(await stream(http, **extra)) if is_stream else await create(http, **extra)
            )

        stopped = await message(stop_sequences=["END"])
        cut = await message(model="long", max_tokens=3)
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "END")
    assert stopped["content"][0]["text"] == "a b"
    assert (cut["stop_reason"], cut["stop_sequence"]) == ("max_tokens", None)
    assert cut["usage"]["output_tokens"] == 3


async def test_empty_and_thinking_only_answers_agree_whole_and_streamed(tmp_path: Path) -> None:
    empty = EventEngine(outputs=[finished("stop", 0)])
    thinker = EventEngine(model_id="thinker", outputs=[TextDelta("<think>hm</think>"), finished()])
    thinking = {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    async with inprocess_network(tmp_path, [empty, thinker]) as net, client(net) as http:
        whole = await create(http)
        streamed = assemble(await stream(http))
        hidden = await create(http, model="thinker")
        thought = await create(http, model="thinker", **thinking)
        streamed_thought = assemble(await stream(http, model="thinker", **thinking))
    text = [{"type": "text", "text": "", "citations": None}]
    assert whole["content"] == streamed["content"] == hidden["content"] == text
    only_thinking = [{"type": "thinking", "thinking": "hm", "signature": ""}]
    assert thought["content"] == streamed_thought["content"] == only_thinking


async def test_a_failure_mid_stream_ends_with_an_error_event(tmp_path: Path) -> None:
    failure = Failed(code="engine_error", message="engine failed: RuntimeError")
    engine = EventEngine(outputs=[TextDelta("partial"), failure])
    async with inprocess_network(tmp_path, [engine]) as net, client(net) as http:
        events = await stream(http)
        whole = await http.post("/v1/messages", json=body())
    name, data = events[-1]
    assert name == "error" and data["type"] == "error"
    assert data["error"]["type"] == "api_error"
    assert "message_stop" not in [n for n, _ in events]
    assert whole.status_code == 502
    assert whole.json()["error"]["type"] == "api_error"
    assert_valid_anthropic("ErrorResponse", whole.json())


async def test_a_client_hanging_up_mid_stream_cancels_the_provider_job(tmp_path: Path) -> None:
    engine = ScriptedEngine(script=" ".join(["word"] * 500), token_delay_s=0.01)
    async with inprocess_network(tmp_path, [engine]) as net:
        async with (
            client(net) as http,
            http.stream("POST", "/v1/messages", json=body(max_tokens=500, stream=True)) as reply,
        ):
            assert reply.status_code == 200
            lines = reply.aiter_lines()
            for _ in range(12):
                await anext(lines)
        async with asyncio.timeout(5):
            while not engine.endings:
                await asyncio.sleep(0.02)
    ending = engine.endings[0]
    assert isinstance(ending, Finished) and ending.reason == "cancelled"
    assert ending.usage.completion_tokens < 100


async def test_the_engine_receives_the_conversation_as_a_neutral_request(tmp_path: Path) -> None:
    engine = EventEngine(outputs=[finished()])
    conversation: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "dropped", "signature": "x"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "timeout"}],
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    async with inprocess_network(tmp_path, [engine]) as net, client(net) as http:
        await create(
            http,
            messages=conversation,
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["\n\n"],
            metadata={"user_id": "u-1"},
            service_tier="auto",
        )
    assert engine.requests[0] == GenerationRequest(
        model=MODEL,
        max_tokens=64,
        messages=(
            Message("system", "Be brief.\nBe kind."),
            Message("user", "Weather in Paris?"),
            Message(
                "assistant",
                "Checking.",
                tool_calls=(ToolCall("toolu_1", "get_weather", '{"c":1}'),),
            ),
            Message("tool", "sunny", tool_call_id="toolu_1", name="get_weather"),
            Message("tool", "Error: timeout", tool_call_id="toolu_1", name="get_weather"),
            Message("user", "And tomorrow?"),
        ),
        sampling=SamplingParams(temperature=0.5, top_p=0.9, top_k=40),
        stop=("\n\n",),
        tools=(Tool("get_weather", "Weather in a city.", WEATHER_SCHEMA),),
        tool_choice=ToolChoice(mode="function", name="get_weather"),
    )


async def test_count_tokens_reports_the_prompt_without_generating(tmp_path: Path) -> None:
    engine = EventEngine(prompt_tokens=23, outputs=[TextDelta("x"), finished()])
    async with inprocess_network(tmp_path, [engine]) as net, client(net) as http:
        response = await http.post(
            "/v1/messages/count_tokens",
            json={"model": MODEL, "messages": USER, "system": "Be brief.", "tools": [WEATHER]},
        )
        recorded = await job_ledger.list_jobs(net.services.db)
    assert response.status_code == 200, response.text
    assert response.json() == {"input_tokens": 23}
    assert_valid_anthropic("CountMessageTokensResponse", response.json())
    assert engine.requests[0].max_tokens == 0
    assert engine.requests[0].messages[0] == Message("system", "Be brief.")
    assert [(job.status, job.completion_tokens) for job in recorded] == [("completed", 0)]


INVALID = [
    ({"model": MODEL, "messages": USER}, "max_tokens: Field required"),
    (body(temperature=1.5), "temperature"),
    (body(max_tokens=0), "max_tokens"),
    (body(messages=[]), "messages"),
    (body(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]), "image"),
    (body(tool_choice={"type": "sometimes"}), "tool_choice"),
    (body(tool_choice={"type": "tool", "name": "nope"}, tools=[WEATHER]), "nope"),
    (body(thinking={"type": "enabled", "budget_tokens": 10}), "budget_tokens"),
    (body(stop_sequences=[""]), "stop_sequences"),
]


@pytest.mark.parametrize(("payload", "mentions"), INVALID)
async def test_invalid_requests_get_a_400_naming_the_field(
    tmp_path: Path, payload: dict[str, Any], mentions: str
) -> None:
    engine = ScriptedEngine()
    async with inprocess_network(tmp_path, [engine]) as net, client(net) as http:
        response = await http.post("/v1/messages", json=payload)
    assert response.status_code == 400
    error = response.json()
    assert_valid_anthropic("ErrorResponse", error)
    assert error["error"]["type"] == "invalid_request_error"
    assert mentions in error["error"]["message"]
    assert engine.requests == []


async def test_bad_keys_unknown_models_and_bad_json_get_anthropic_errors(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [ScriptedEngine()]) as net:
        async with httpx.AsyncClient(base_url=net.base_url) as anonymous:
            bad_key = await anonymous.post(
                "/v1/messages", json=body(), headers={"x-api-key": "sk-wrong"}
            )
        async with client(net) as http:
            unknown = await http.post("/v1/messages", json=body(model="no-such-model"))
            not_json = await http.post("/v1/messages", content=b"{not json")
            count_bad = await http.post("/v1/messages/count_tokens", json={"model": MODEL})
    results = [(bad_key, 401), (unknown, 404), (not_json, 400), (count_bad, 400)]
    for response, status in results:
        assert response.status_code == status
        assert_valid_anthropic("ErrorResponse", response.json())
    assert bad_key.json()["error"]["type"] == "authentication_error"
    assert unknown.json()["error"]["type"] == "not_found_error"
    assert "messages: Field required" in count_bad.json()["error"]["message"]


async def test_x_api_key_and_the_version_header_are_accepted(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine()]) as net,
        httpx.AsyncClient(base_url=net.base_url) as http,
    ):
        headers = {"x-api-key": net.key, "anthropic-version": "2023-06-01"}
        response = await http.post("/v1/messages", json=body(), headers=headers)
    assert response.status_code == 200
    assert response.headers["x-moonflower-job-id"]


async def test_the_official_sdk_reads_thinking_and_tool_use_blocks(tmp_path: Path) -> None:
    engine = thinking_tool_engine()
    async with inprocess_network(tmp_path, [engine]) as net:
        sdk = anthropic.AsyncAnthropic(base_url=net.base_url, api_key=net.key, max_retries=0)
        params: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 2048,
            "messages": USER,
            "tools": [WEATHER],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
        whole = await sdk.messages.create(**params)
        async with sdk.messages.stream(**params) as events:
            thinking = [e.thinking async for e in events if e.type == "thinking"]
            final = await events.get_final_message()
        await sdk.close()
    for message in (whole, final):
        thought, text, call = message.content
        assert isinstance(thought, anthropic.types.ThinkingBlock)
        assert thought.thinking == "The user wants weather."
        assert isinstance(text, anthropic.types.TextBlock) and text.text == "Let me check."
        assert isinstance(call, anthropic.types.ToolUseBlock)
        assert call.input == {"city": "Paris"}
        assert message.stop_reason == "tool_use"
    assert "".join(thinking) == "The user wants weather."


async def test_a_model_with_no_provider_now_is_overloaded_529(tmp_path: Path) -> None:
    engine = ScriptedEngine(model_id="gone-soon")
    async with inprocess_network(tmp_path, [engine]) as net:
        await net.stop_provider(net.agents[0])
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            for _ in range(50):
                if not (await client.get("/health")).json()["providers"]:
                    break
                await asyncio.sleep(0.05)
            response = await client.post(
                "/v1/messages",
                json={
                    "model": "gone-soon",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"
    assert_valid_anthropic("ErrorResponse", response.json())
