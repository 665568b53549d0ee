"""Token pieces to events: logprobs ride on the delta that carries their token's text, stop
strings and tool calls shape what is sent, and the finish reason follows."""

from __future__ import annotations

from typing import Any

from moonflower.generation import (
    GenerationRequest,
    Message,
    OutputEvent,
    ResponseFormat,
    TextDelta,
    TokenLogprob,
    Tool,
    ToolCallDelta,
    ToolChoice,
)
from moonflower.provider.engines.grammar import output_constraint
from moonflower.provider.engines.output_events import OutputAssembler, shaper_for, stops_for
from moonflower.provider.engines.tool_output import (
    ChoiceCallStream,
    ForcedCallStream,
    PlainText,
    ToolCallScanner,
)

TOOLS = (Tool("get_time"), Tool("get_weather"))


def lp(token: str) -> TokenLogprob:
    return TokenLogprob(token, -1.0)


def push_all(assembler: OutputAssembler, pieces: list[bytes]) -> list[OutputEvent]:
    events: list[OutputEvent] = []
    for piece in pieces:
        events += assembler.push(piece, lp(piece.decode("utf-8", errors="replace")))
        if assembler.stopped is not None:
            break
    return events


def texts(events: list[OutputEvent]) -> list[TextDelta]:
    return [e for e in events if isinstance(e, TextDelta)]


def test_each_token_logprob_arrives_with_its_text() -> None:
    assembler = OutputAssembler(PlainText(), ())
    events = push_all(assembler, [b"Hello", b" world"])
    events += assembler.finish(complete=True)
    assert [(d.text, [t.token for t in d.logprobs]) for d in texts(events)] == [
        ("Hello", ["Hello"]),
        (" world", [" world"]),
    ]


def test_a_character_split_across_tokens_carries_both_tokens() -> None:
    assembler = OutputAssembler(PlainText(), ())
    snowman = "☃".encode()
    events = push_all(assembler, [b"a", snowman[:1], snowman[1:], b"b"])
    assert [(d.text, len(d.logprobs)) for d in texts(events)] == [("a", 1), ("☃", 2), ("b", 1)]


def test_held_back_text_brings_its_logprobs_when_released() -> None:
    assembler = OutputAssembler(PlainText(), ("STOP",))
    events = push_all(assembler, [b"go ", b"ST", b"ay"])
    events += assembler.finish(complete=True)
    assert [(d.text, len(d.logprobs)) for d in texts(events)] == [("go ", 1), ("STay", 2)]
    assert assembler.finish_reason("stop") == "stop"


def test_a_stop_string_ends_the_text() -> None:
    assembler = OutputAssembler(PlainText(), ("STOP",))
    events = push_all(assembler, [b"go ", b"ST", b"OP", b"never"])
    events += assembler.finish(complete=True)
    assert "".join(d.text for d in texts(events)) == "go "
    assert assembler.stopped == "STOP"


def test_tool_calls_make_the_reason_tool_calls_and_take_their_tokens() -> None:
    assembler = OutputAssembler(ToolCallScanner(["get_time"]), ())
    pieces = [b"Sure.", b"<tool_call>", b'{"name": "get_time"}', b"</tool_call>"]
    events = push_all(assembler, pieces) + assembler.finish(complete=True)
    assert [type(e) for e in events] == [TextDelta, ToolCallDelta]
    assert [t.token for t in texts(events)[0].logprobs] == ["Sure."]
    assert assembler.finish_reason("stop") == "tool_calls"
    assert assembler.finish_reason("length") == "length"
    assert assembler.finish_reason("cancelled") == "cancelled"


def test_the_request_decides_the_shaper_and_the_stops() -> None:
    def request(**fields: Any) -> GenerationRequest:
        return GenerationRequest(
            model="m",
            messages=(Message("user", "hi"),),
            stop=("x",),
            **fields,
        )

    cases = [
        (request(), PlainText, ("x",)),
        (request(tools=TOOLS), ToolCallScanner, ("x",)),
        (request(tools=TOOLS, tool_choice=ToolChoice("none")), PlainText, ("x",)),
        (
            request(tools=TOOLS, tool_choice=ToolChoice("function", "get_time")),
            ForcedCallStream,
            (),
        ),
        (request(tools=TOOLS, tool_choice=ToolChoice("required")), ChoiceCallStream, ()),
        (request(tools=TOOLS[:1], tool_choice=ToolChoice("required")), ForcedCallStream, ()),
        (request(tools=TOOLS, response_format=ResponseFormat("json_object")), PlainText, ("x",)),
    ]
    for case, shaper, stops in cases:
        constraint = output_constraint(case)
        assert isinstance(shaper_for(case, constraint), shaper)
        assert stops_for(case, constraint) == stops
