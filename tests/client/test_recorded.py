"""Reading what a consumer received: the coordinator's own renderers produce each dialect's
whole body and stream from the same output events, and what the readers get back must hash
exactly as the provider's tally of those events does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from moonflower.client.recorded import (
    CarriedReceipt,
    Dialect,
    UnreadableResponse,
    detect_body_dialect,
    from_anthropic_body,
    from_body,
    from_chat_body,
    from_completion_body,
    from_responses_body,
)
from moonflower.client.recorded_stream import from_stream, sse_events
from moonflower.client.verify import Received
from moonflower.coordinator import sse
from moonflower.coordinator.dialects import dialect as dialects
from moonflower.coordinator.dialects.anthropic_render import MessageRenderer
from moonflower.coordinator.dialects.openai_chat_render import ChatRenderer
from moonflower.coordinator.dialects.openai_completions import CompletionCall
from moonflower.coordinator.dialects.openai_completions_render import CompletionRenderer
from moonflower.coordinator.dialects.openai_responses_render import ResponsesRenderer
from moonflower.crypto.receipt import output_digest
from moonflower.generation import (
    Failed,
    Finished,
    GenerationRequest,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    SamplingParams,
    Started,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from moonflower.receipts import OutputTally

RECEIPTED = Receipted(
    job_id="job-1",
    provider_id="provider-1",
    receipt='{"v":1}',
    signature="c2ln",
    response_hash="ab" * 32,
)
CARRIED = CarriedReceipt(**RECEIPTED.payload())

SCENARIOS: dict[str, list[OutputEvent]] = {
    "text and reasoning": [
        ReasoningDelta("Colours, "),
        ReasoningDelta("three of them."),
        TextDelta("Red, "),
        TextDelta("orange ✓ and yellow."),
        Finished(reason="stop", usage=Usage(5, 9)),
    ],
    "tool calls": [
        TextDelta("Let me look."),
        ToolCallDelta(0, '{"city": ', id="call_a", name="get_weather"),
        ToolCallDelta(0, '"Paris"}'),
        ToolCallDelta(1, '{"city": "Oslo", "unit": "celsius"}', id="call_b", name="get_weather"),
        Finished(reason="tool_calls", usage=Usage(5, 20)),
    ],
    "cut short": [TextDelta("One, two"), Finished(reason="length", usage=Usage(5, 3))],
    "stop sequence": [
        TextDelta("Done"),
        Finished(reason="stop", usage=Usage(5, 1), stop_sequence="END"),
    ],
    "nothing": [Finished(reason="stop", usage=Usage(5, 0))],
}
TEXT_ONLY = ["cut short", "stop sequence", "nothing"]


def tallied(events: Sequence[OutputEvent]) -> str:
    """The output digest a provider signs for these events."""
    tally = OutputTally()
    tally.add(Started(prompt_tokens=5))
    for event in events:
        if not isinstance(event, Receipted):
            tally.add(event)
    return tally.digest()


def digest(received: Received) -> str:
    return output_digest(
        received.text, received.reasoning or "", received.tool_calls, received.finish_reason
    )


def with_receipt(events: Sequence[OutputEvent]) -> list[OutputEvent]:
    return [*events[:-1], RECEIPTED, events[-1]]


async def replay(events: Sequence[OutputEvent]) -> AsyncIterator[OutputEvent]:
    for event in events:
        yield event


async def collect(renderer: dialects.Renderer, events: Sequence[OutputEvent]) -> bytes:
    """The stream's bytes as a response sends them, `[DONE]` after OpenAI's."""
    trailer = b"" if isinstance(renderer, MessageRenderer) else sse.DONE
    return b"".join([frame async for frame in sse.framed(renderer.stream(replay(events)), trailer)])


def completion_renderer() -> CompletionRenderer:
    call = CompletionCall(
        request=GenerationRequest(model="m", prompt="Once"),
        prompt="Once",
        is_stream=True,
        include_usage=True,
        is_echo=False,
    )
    return CompletionRenderer(call, fingerprint="fp", include_usage=True)


def renderer_of(dialect: Dialect) -> dialects.Renderer:
    if dialect == "openai-chat":
        return ChatRenderer(model="m", fingerprint="fp", include_usage=True)
    if dialect == "openai-completions":
        return completion_renderer()
    if dialect == "openai-responses":
        return ResponsesRenderer(
            model="m", max_output_tokens=None, echo={}, sampling=SamplingParams()
        )
    return MessageRenderer(model="m", prompt_tokens=5, is_thinking=True)


async def body_of(dialect: Dialect, events: Sequence[OutputEvent]) -> Any:
    """The whole body the coordinator answers with: the dialect's stream, folded."""
    assert isinstance(events[-1], Finished)
    return await dialects.whole(renderer_of(dialect), replay(events))


async def stream_of(dialect: Dialect, events: Sequence[OutputEvent]) -> bytes:
    return await collect(renderer_of(dialect), events)


FULL: list[Dialect] = ["openai-chat", "openai-responses", "anthropic"]
CASES = [(d, s) for d in FULL for s in SCENARIOS] + [("openai-completions", s) for s in TEXT_ONLY]


@pytest.mark.parametrize(("dialect", "scenario"), CASES)
async def test_a_whole_body_reads_back_to_the_providers_output_digest(
    dialect: Dialect, scenario: str
) -> None:
    events = SCENARIOS[scenario]
    body = await body_of(dialect, events)
    assert detect_body_dialect(body) == dialect
    received = from_body(body, dialect)
    assert digest(received) == tallied(events)


@pytest.mark.parametrize(("dialect", "scenario"), CASES)
async def test_a_recorded_stream_reads_back_to_the_digest_and_its_receipt(
    dialect: Dialect, scenario: str
) -> None:
    events = with_receipt(SCENARIOS[scenario])
    recorded = from_stream(await stream_of(dialect, events))
    assert recorded.receipt == CARRIED
    assert digest(recorded.received) == tallied(events)
    assert from_stream(await stream_of(dialect, events), dialect) == recorded


async def test_chat_bodies_give_text_reasoning_calls_and_finish() -> None:
    received = from_chat_body(await body_of("openai-chat", SCENARIOS["tool calls"]))
    assert received == Received(
        text="Let me look.",
        reasoning="",
        tool_calls=(
            ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_b", "get_weather", '{"city": "Oslo", "unit": "celsius"}'),
        ),
        finish_reason="tool_calls",
    )


@pytest.mark.parametrize(
    ("scenario", "finish"),
    [("text and reasoning", "stop"), ("stop sequence", "stop"), ("cut short", "length")],
)
async def test_dialect_finish_reasons_map_back_to_neutral_ones(scenario: str, finish: str) -> None:
    events = SCENARIOS[scenario]
    anthropic = await body_of("anthropic", events)
    assert anthropic["stop_reason"] in ("end_turn", "stop_sequence", "max_tokens")
    assert from_anthropic_body(anthropic).finish_reason == finish
    responses = await body_of("openai-responses", events)
    assert responses["status"] in ("completed", "incomplete")
    assert from_responses_body(responses).finish_reason == finish
    assert from_chat_body(await body_of("openai-chat", events)).finish_reason == finish
    if scenario != "text and reasoning":
        assert (
            from_completion_body(await body_of("openai-completions", events)).finish_reason
            == finish
        )


async def test_tool_use_maps_to_tool_calls_and_anthropic_arguments_are_marked_rebuilt() -> None:
    received = from_anthropic_body(await body_of("anthropic", SCENARIOS["tool calls"]))
    assert received.finish_reason == "tool_calls"
    assert not received.has_exact_arguments
    assert [call.arguments for call in received.tool_calls] == [
        '{"city": "Paris"}',
        '{"city": "Oslo", "unit": "celsius"}',
    ]
    responses = from_responses_body(await body_of("openai-responses", SCENARIOS["tool calls"]))
    assert responses == Received(
        text="Let me look.",
        reasoning=None,
        tool_calls=(
            ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_b", "get_weather", '{"city": "Oslo", "unit": "celsius"}'),
        ),
        finish_reason="tool_calls",
    )


async def test_compact_arguments_in_a_whole_anthropic_message_cannot_be_recovered() -> None:
    events: list[OutputEvent] = [
        ToolCallDelta(0, '{"city":"Paris"}', id="call_a", name="get_weather"),
        Finished(reason="tool_calls", usage=Usage(5, 5)),
    ]
    received = from_anthropic_body(await body_of("anthropic", events))
    assert digest(received) != tallied(events)
    assert not received.has_exact_arguments


async def test_a_stream_keeps_compact_arguments_exactly() -> None:
    events: list[OutputEvent] = [
        ToolCallDelta(0, '{"city":', id="call_a", name="get_weather"),
        ToolCallDelta(0, '"Paris"}'),
        Finished(reason="tool_calls", usage=Usage(5, 5)),
    ]
    recorded = from_stream(await stream_of("anthropic", events))
    assert recorded.received.has_exact_arguments
    assert digest(recorded.received) == tallied(events)


async def test_reasoning_that_is_not_shown_reads_as_unknown() -> None:
    events = SCENARIOS["text and reasoning"]
    hidden = MessageRenderer(model="m", prompt_tokens=5, is_thinking=False)
    body = await dialects.whole(hidden, replay(events))
    assert from_anthropic_body(body).reasoning is None
    hidden = MessageRenderer(model="m", prompt_tokens=5, is_thinking=False)
    streamed = from_stream(await collect(hidden, events))
    assert streamed.received.reasoning is None
    assert streamed.received.text == "Red, orange ✓ and yellow."
    assert from_completion_body(await body_of("openai-completions", events)).reasoning is None
    assert from_chat_body(await body_of("openai-chat", SCENARIOS["cut short"])).reasoning == ""


@pytest.mark.parametrize(
    "dialect", ["openai-chat", "openai-completions", "openai-responses", "anthropic"]
)
async def test_a_stream_that_fails_mid_way_reads_as_failed_with_its_receipt(
    dialect: Dialect,
) -> None:
    failure = Failed(code="engine_error", message="The engine stopped.")
    events: list[OutputEvent] = [TextDelta("Half an ans"), RECEIPTED, failure]
    recorded = from_stream(await stream_of(dialect, events))
    assert recorded.received.finish_reason == "failed"
    assert recorded.received.text == "Half an ans"
    if dialect != "anthropic":  # Anthropic's error event ends the stream before a receipt
        assert recorded.receipt == CARRIED


async def test_a_stream_cut_off_before_its_finish_reads_as_cancelled() -> None:
    data = await stream_of("openai-chat", with_receipt(SCENARIOS["cut short"]))
    cut = data[: data.index(b'"moonflower_receipt"')]
    cut = cut[: cut.rindex(b"\n\n") + 2]
    recorded = from_stream(cut)
    assert recorded.receipt is None
    assert recorded.received.finish_reason == "cancelled"


def test_sse_reading_takes_crlf_comments_and_multi_line_data() -> None:
    data = b': keep-alive\r\nevent: ping\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert list(sse_events(data)) == [("ping", '{"a":\n1}'), (None, "[DONE]")]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"data: not json\n\n",
        b'data: {"object": "something.else"}\n\n',
        b"\xff\xfe",
    ],
)
def test_unreadable_streams_are_refused(bad: bytes) -> None:
    with pytest.raises(UnreadableResponse):
        from_stream(bad)


def test_bodies_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(UnreadableResponse):
        detect_body_dialect({"object": "list"})
    with pytest.raises(UnreadableResponse):
        from_chat_body({"object": "chat.completion", "choices": []})
    with pytest.raises(UnreadableResponse):
        from_anthropic_body({"type": "message", "content": [{"type": "text", "text": 3}]})
    with pytest.raises(UnreadableResponse):
        from_stream(b'data: {"object": "chat.completion.chunk", "choices": [{"delta": 1}]}\n\n')
