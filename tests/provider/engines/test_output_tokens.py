"""Token counts on output events: every token an engine samples is counted on exactly one
`TextDelta` or `ToolCallDelta`, so that once an output has ended, the counts on its events
add up to the tokens pushed — whatever the shaper, the stop strings or the way characters
were split across tokens — and the provider's delta batching keeps the sum.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator

import pytest

from moonflower.generation import (
    Finished,
    GeneratedEvent,
    GenerationEvent,
    Started,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from moonflower.provider.engines.output_events import OutputAssembler
from moonflower.provider.engines.tool_output import (
    ChoiceCallStream,
    ForcedCallStream,
    OutputShaper,
    PlainText,
    ToolCallScanner,
)
from moonflower.provider.jobs import DeltaBatcher

TOOLS = ("get_time", "get_weather")


def ids() -> Iterator[str]:
    return (f"call_{i}" for i in itertools.count())


def shaper(kind: str) -> OutputShaper:
    """A shaper with predictable call ids."""
    new_id = ids().__next__
    if kind == "plain":
        return PlainText()
    if kind == "scanner":
        return ToolCallScanner(TOOLS, new_id)
    if kind == "forced":
        return ForcedCallStream("get_weather", new_id)
    return ChoiceCallStream(TOOLS, new_id)


def generate(
    kind: str, pieces: list[bytes], stops: tuple[str, ...] = ()
) -> tuple[list[GeneratedEvent], int]:
    """Push `pieces` as an engine does (stopping at a stop string) and end the output as
    complete; the events and how many tokens were pushed."""
    assembler = OutputAssembler(shaper(kind), stops)
    events: list[GeneratedEvent] = []
    pushed = 0
    for piece in pieces:
        events += assembler.push(piece)
        pushed += 1
        if assembler.stopped is not None:
            break
    events += assembler.finish(complete=True)
    return events, pushed


def counted(events: list[GeneratedEvent]) -> list[tuple[str, int]]:
    """Each event as (its text or arguments, its token count)."""
    return [
        (e.text if isinstance(e, TextDelta) else e.arguments, e.tokens)
        for e in events
        if isinstance(e, TextDelta | ToolCallDelta)
    ]


def total(events: Iterable[GenerationEvent]) -> int:
    return sum(e.tokens for e in events if isinstance(e, TextDelta | ToolCallDelta))


SNOWMAN = "☃".encode()  # 3 bytes
ROCKET = "🚀".encode()  # 4 bytes
MOON = "月".encode()  # 3 bytes
CALL = b'{"name": "get_time", "arguments": {}}'

# (shaper, stops, token pieces, the events expected as (text or arguments, tokens))
CASES: dict[str, tuple[str, tuple[str, ...], list[bytes], list[tuple[str, int]]]] = {
    "plain text": (
        "plain",
        (),
        [b"Hello", b",", b" world"],
        [("Hello", 1), (",", 1), (" world", 1)],
    ),
    "a token with no bytes": ("plain", (), [b"a", b"", b"b"], [("a", 1), ("b", 2)]),
    "a character split over three tokens": (
        "plain",
        (),
        [b"a", SNOWMAN[:1], SNOWMAN[1:2], SNOWMAN[2:], b"b"],
        [("a", 1), ("☃", 3), ("b", 1)],
    ),
    "an emoji split over four tokens, last": (
        "plain",
        (),
        [b"go ", ROCKET[:1], ROCKET[1:2], ROCKET[2:3], ROCKET[3:]],
        [("go ", 1), ("🚀", 4)],
    ),
    "CJK split two and one": (
        "plain",
        (),
        [MOON[:2], MOON[2:] + MOON[:1], MOON[1:]],
        [("月", 2), ("月", 1)],
    ),
    "a held-back stop prefix that turns out to be text": (
        "plain",
        ("STOP",),
        [b"go ", b"ST", b"ay"],
        [("go ", 1), ("STay", 2)],
    ),
    "a held-back stop prefix released at the end": (
        "plain",
        ("STOP",),
        [b"go ", b"S", b"T"],
        [("go ", 1), ("ST", 2)],
    ),
    "a multi-byte stop prefix released at the end": (
        "plain",
        ("☃☃",),
        [b"x", SNOWMAN[:2], SNOWMAN[2:]],
        [("x", 1), ("☃", 2)],
    ),
    "text then a call": (
        "scanner",
        (),
        [b"Sure.", b" <tool", b"_call>", CALL, b"</tool_call>"],
        [("Sure.", 1), ("{}", 4)],  # " <tool" may open a call: it rides with the call
    ),
    "a call then text": (
        "scanner",
        (),
        [b"<tool_call>", CALL, b"</tool_call>", b" Done."],
        [("{}", 3), ("Done.", 1)],
    ),
    "an unclosed call at the end": (
        "scanner",
        (),
        [b"<tool_call>", CALL[:10], CALL[10:]],
        [("{}", 3)],
    ),
    "a block naming no offered tool is text": (
        "scanner",
        (),
        [b"<tool_call>", b'{"name": "rm"}', b"</tool_call>"],
        [('<tool_call>{"name": "rm"}</tool_call>', 3)],
    ),
    "a possible tag start released at the end": (
        "scanner",
        (),
        [b"a ", b"<tool"],
        [("a", 1), (" <tool", 1)],
    ),
    "a forced call": (
        "forced",
        (),
        [b'{"city"', b": ", b'"Paris"}'],
        [("", 0), ('{"city"', 1), (": ", 1), ('"Paris"}', 1)],
    ),
    "a choice of calls, the wrapper closing last": (
        "choice",
        (),
        [b'{"name": "get_weather", ', b'"arguments": {"city": "Paris"', b"}", b"}"],
        [("", 0), ('{"city": "Paris"', 2), ("}", 2)],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_ended_output_counts_every_pushed_token_once(name: str) -> None:
    kind, stops, pieces, expected = CASES[name]
    events, pushed = generate(kind, pieces, stops)
    assert counted(events) == expected
    assert total(events) == pushed == len(pieces)


@pytest.mark.parametrize(
    ("kind", "stops", "pieces", "delivered"),
    [
        ("plain", ("STOP",), [b"go ", b"ST", b"OP"], 1),
        ("plain", ("STOP",), [b"go", b"STOP"], 1),
        ("plain", ("</s>",), [b"</s>"], 0),
        ("scanner", (), [b"<tool_call>", CALL, b"</tool_call>", b"\n"], 3),
    ],
    ids=["stop string over two tokens", "stop string in one token", "only a stop", "call + ws"],
)
def test_tokens_after_the_last_event_are_not_counted_as_delivered(
    kind: str, stops: tuple[str, ...], pieces: list[bytes], delivered: int
) -> None:
    # A delta's count is what a consumer pays for when a job breaks off: tokens whose text
    # never reached anyone (a stop string, whitespace after a call) are not in any of them.
    # A job that completes is billed from its receipt's full count instead.
    events, pushed = generate(kind, pieces, stops)
    assert pushed == len(pieces)
    assert total(events) == delivered


TEXTS = {
    "plain": ("Moonflower ☃ 月が綺麗 🚀🌸 done.", ()),
    "plain with a stop prefix": ("They said STO and STAY, not the word. ☃", ("STOP",)),
    "scanner": (
        'Checking 🌙. <tool_call>{"name": "get_time", "arguments": {"tz": "月"}}</tool_call>'
        ' Then <tool_call>{"name": "nope"}</tool_call> and a <tool_c tag. Done ☃',
        (),
    ),
    "forced": ('{"city": "Zürich ☃", "days": [1, 2]}', ()),
    "choice": ('{"name": "get_weather", "arguments": {"city": "Kyōto 🚀"}}', ()),
}


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` cut at random byte offsets (characters split anywhere), one to six bytes."""
    pieces = []
    start = 0
    while start < len(data):
        end = min(len(data), start + rng.randint(1, 6))
        pieces.append(data[start:end])
        start = end
    return pieces


@pytest.mark.parametrize("name", list(TEXTS))
def test_any_chunking_of_an_output_counts_every_token(name: str) -> None:
    kind = name.split()[0]
    text, stops = TEXTS[name]
    data = text.encode()
    reference = None
    for seed in range(60):
        pieces = chunks(data, random.Random(seed))
        events, pushed = generate(kind, pieces, stops)
        assert total(events) == pushed == len(pieces), (seed, pieces)
        shaped = "".join(piece for piece, _tokens in counted(events))
        if reference is None:
            reference = shaped
        assert shaped == reference  # and the chunking changed nothing else


# --- DeltaBatcher -------------------------------------------------------------------------


def batched(events: list[GenerationEvent], interval_s: float) -> list[GenerationEvent]:
    sent: list[GenerationEvent] = []
    batcher = DeltaBatcher(interval_s, sent.append)
    for event in events:
        batcher.add(event)
    batcher.flush()
    return sent


MIXED: list[GenerationEvent] = [
    Started(prompt_tokens=4),
    TextDelta("a", tokens=1),
    TextDelta("b", tokens=2),
    TextDelta("", tokens=0),
    TextDelta("c", tokens=3),
    ToolCallDelta(0, "", id="call_0", name="get_time", tokens=0),
    ToolCallDelta(0, "{}", tokens=4),
    TextDelta("d", tokens=5),
    TextDelta("e", tokens=6),
    Finished(reason="stop", usage=Usage(4, 21)),
]


def test_joined_deltas_carry_the_sum_of_their_tokens() -> None:
    assert batched(MIXED, interval_s=60.0) == [
        Started(prompt_tokens=4),
        TextDelta("a", tokens=1),
        TextDelta("bc", tokens=5),
        ToolCallDelta(0, "", id="call_0", name="get_time", tokens=0),
        ToolCallDelta(0, "{}", tokens=4),
        TextDelta("de", tokens=11),
        Finished(reason="stop", usage=Usage(4, 21)),
    ]


@pytest.mark.parametrize("interval_s", [0.0, 60.0])
def test_batching_keeps_the_token_total(interval_s: float) -> None:
    assert total(batched(MIXED, interval_s)) == total(MIXED) == 21


def test_the_batched_events_of_a_generation_count_every_token() -> None:
    text, stops = TEXTS["scanner"]
    pieces = chunks(text.encode(), random.Random(7))
    events, pushed = generate("scanner", pieces, stops)
    assert total(batched(list(events), interval_s=60.0)) == pushed == len(pieces)
