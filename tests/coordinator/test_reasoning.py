"""The `<think>` splitter: property tests against a whole-text regex reference, for arbitrary
chunkings, plus one example per documented case and the async adapter's event ordering."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from moonflower.generation import (
    Failed,
    Finished,
    OutputEvent,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from moonflower.reasoning import ThinkSplitter, split_reasoning

TAGS = ("<think>", "</think>")
# One block (to its first close, or to the end) with the whitespace after its close, or a
# stray close with the whitespace after it: everything else is visible.
HIDDEN = re.compile(r"<think>.*?(?:</think>\s*|\Z)|</think>\s*", re.DOTALL)
BLOCK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Reference:
    visible_at: list[int]
    """Indices (into the original text) of the characters that are visible, in order."""
    reasoning: str
    text: str

    @property
    def visible(self) -> str:
        return "".join(self.text[i] for i in self.visible_at)


def reference(text: str, *, starts_in_reasoning: bool = False) -> Reference:
    """The whole-text rule, as regexes over the complete string."""
    shift = len("<think>") if starts_in_reasoning else 0
    whole = "<think>" * starts_in_reasoning + text
    hidden = set[int]()
    for match in HIDDEN.finditer(whole):
        hidden.update(range(match.start() - shift, match.end() - shift))
    reasoning = "".join(m.group(1).replace("<think>", "") for m in BLOCK.finditer(whole))
    visible_at = [i for i in range(len(text)) if i not in hidden]
    return Reference(visible_at, reasoning, text)


def held_tail(text: str) -> str:
    """The longest suffix that is a proper prefix of a tag: what may be held back."""
    for size in range(min(len(text), 7), 0, -1):
        tail = text[-size:]
        if any(tag.startswith(tail) and tag != tail for tag in TAGS):
            return tail
    return ""


def joined(pieces: Sequence[OutputEvent]) -> tuple[str, str]:
    visible = "".join(p.text for p in pieces if isinstance(p, TextDelta))
    reasoning = "".join(p.text for p in pieces if isinstance(p, ReasoningDelta))
    return visible, reasoning


def run(chunks: Sequence[str], *, starts_in_reasoning: bool = False) -> list[OutputEvent]:
    splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
    pieces: list[OutputEvent] = []
    for chunk in chunks:
        pieces += splitter.push(chunk)
    return pieces + splitter.flush()


FRAGMENTS = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<",
        "</",
        "<th",
        "ink>",
        "</thi",
        "nk>",
        "think",
        ">",
        "<thinking>",
        "</b>",
        "<<",
        "a",
        "Hello",
        " ",
        "\n",
        "\n\n",
        "\t",
        "x < y",
    ]
)
PIECES = FRAGMENTS | st.text(alphabet="<>/think \n", max_size=4) | st.text(max_size=3)
TEXTS = st.lists(PIECES, max_size=16).map("".join)
PROPERTY = settings(max_examples=400, deadline=None)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A text and an arbitrary chunking of it (empty chunks included)."""
    text = draw(TEXTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


# --- properties ------------------------------------------------------------------------


@PROPERTY
@given(chunked(), st.booleans())
def test_any_chunking_gives_the_whole_text_result(
    case: tuple[str, list[str]], starts_in_reasoning: bool
) -> None:
    text, chunks = case
    expected = reference(text, starts_in_reasoning=starts_in_reasoning)
    whole = joined(run([text], starts_in_reasoning=starts_in_reasoning))
    assert whole == (expected.visible, expected.reasoning)
    assert joined(run(chunks, starts_in_reasoning=starts_in_reasoning)) == whole


@PROPERTY
@given(chunked(), st.booleans())
def test_the_adapter_splits_every_chunking_like_the_splitter(
    case: tuple[str, list[str]], starts_in_reasoning: bool
) -> None:
    """The adapter passes most deltas through untouched; the result must not change."""
    _text, chunks = case
    events = [TextDelta(chunk, tokens=1) for chunk in chunks]
    out = asyncio.run(adapt([*events, FINISHED], starts_in_reasoning=starts_in_reasoning))
    assert out[-1] == FINISHED
    pieces = out[:-1]
    assert all(p.text for p in pieces if isinstance(p, TextDelta | ReasoningDelta))
    assert joined(pieces) == joined(run(chunks, starts_in_reasoning=starts_in_reasoning))


@PROPERTY
@given(chunked(), st.booleans())
def test_pieces_are_never_empty_and_never_hold_a_tag(
    case: tuple[str, list[str]], starts_in_reasoning: bool
) -> None:
    _text, chunks = case
    for piece in run(chunks, starts_in_reasoning=starts_in_reasoning):
        assert isinstance(piece, TextDelta | ReasoningDelta)
        assert piece.text
        assert not any(tag in piece.text for tag in TAGS)


@PROPERTY
@given(chunked(), st.booleans())
def test_only_a_possible_tag_start_is_held_back(
    case: tuple[str, list[str]], starts_in_reasoning: bool
) -> None:
    """After every push, what was released is exactly the whole-text result of everything
    received except the tail that could still become a tag."""
    _text, chunks = case
    splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
    released: list[OutputEvent] = []
    received = ""
    for chunk in chunks:
        released += splitter.push(chunk)
        received += chunk
        tail = held_tail(received)
        assert splitter.held == tail
        settled = reference(
            received[: len(received) - len(tail)], starts_in_reasoning=starts_in_reasoning
        )
        assert joined(released) == (settled.visible, settled.reasoning)


@PROPERTY
@given(chunked(), st.booleans())
def test_logprobs_go_with_the_first_visible_piece_of_their_delta(
    case: tuple[str, list[str]], starts_in_reasoning: bool
) -> None:
    text, chunks = case
    visible_at = reference(text, starts_in_reasoning=starts_in_reasoning).visible_at
    splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
    pieces: list[OutputEvent] = []
    for number, chunk in enumerate(chunks):
        pieces += splitter.push(chunk, (TokenLogprob(token=str(number), logprob=-1.0),))
    pieces += splitter.flush()

    # The visible piece holding each visible character (in visible order).
    piece_of_visible: list[int] = []
    for index, piece in enumerate(pieces):
        if isinstance(piece, TextDelta):
            piece_of_visible += [index] * len(piece.text)
    expected: dict[str, int] = {}
    start = 0
    for number, chunk in enumerate(chunks):
        own = [k for k, i in enumerate(visible_at) if start <= i < start + len(chunk)]
        if own:
            expected[str(number)] = piece_of_visible[own[0]]
        start += len(chunk)
    placed = {
        lp.token: index
        for index, piece in enumerate(pieces)
        if isinstance(piece, TextDelta)
        for lp in piece.logprobs
    }
    assert placed == expected
    order = [lp.token for p in pieces if isinstance(p, TextDelta) for lp in p.logprobs]
    assert order == sorted(order, key=int)


def test_reference_agrees_with_hand_worked_examples() -> None:
    """Guards the reference itself, so the properties above compare against the rule."""
    ref = reference("a<think>r</think>\n b</think> c<think>q<think>s")
    assert (ref.visible, ref.reasoning) == ("abc", "rqs")
    ref = reference("r</think>v", starts_in_reasoning=True)
    assert (ref.visible, ref.reasoning) == ("v", "r")


# --- examples ---------------------------------------------------------------------------


def kinds(pieces: Sequence[OutputEvent]) -> list[tuple[str, str]]:
    return [(p.kind, p.text) for p in pieces if isinstance(p, TextDelta | ReasoningDelta)]


def test_plain_text_is_released_at_once() -> None:
    splitter = ThinkSplitter()
    assert kinds(splitter.push("Hello")) == [("text", "Hello")]
    assert kinds(splitter.push(" world")) == [("text", " world")]
    assert splitter.flush() == []


def test_a_block_before_the_answer_becomes_reasoning() -> None:
    pieces = run(["<think>The user greets me.</think>\n\nHello!"])
    assert kinds(pieces) == [("reasoning", "The user greets me."), ("text", "Hello!")]


def test_tags_split_across_chunks_are_recognised() -> None:
    splitter = ThinkSplitter()
    assert kinds(splitter.push("Hi <th")) == [("text", "Hi ")]
    assert splitter.held == "<th"
    assert kinds(splitter.push("ink>plan")) == [("reasoning", "plan")]
    assert kinds(splitter.push(" more</")) == [("reasoning", " more")]
    assert kinds(splitter.push("think")) == []
    assert kinds(splitter.push(">ok")) == [("text", "ok")]


def test_an_unclosed_block_is_reasoning_to_the_end() -> None:
    pieces = run(["Answer. <think>still going", " and <thi"])
    assert kinds(pieces) == [
        ("text", "Answer. "),
        ("reasoning", "still going"),
        ("reasoning", " and "),
        ("reasoning", "<thi"),
    ]


def test_output_that_starts_inside_a_block_is_reasoning_until_it_closes() -> None:
    pieces = run(["Let me see", "</think>", " Yes."], starts_in_reasoning=True)
    assert kinds(pieces) == [("reasoning", "Let me see"), ("text", "Yes.")]


def test_several_blocks_with_text_around_them() -> None:
    pieces = run(["a<think>one</think>b<think>two</think>c"])
    assert joined(pieces) == ("abc", "onetwo")


def test_a_less_than_sign_that_starts_no_tag_stays_visible() -> None:
    assert joined(run(["x < y", " and <b>bold</b>", " <thinking>"])) == (
        "x < y and <b>bold</b> <thinking>",
        "",
    )
    splitter = ThinkSplitter()
    assert kinds(splitter.push("2 <")) == [("text", "2 ")]
    assert kinds(splitter.push(" 3")) == [("text", "< 3")]
    assert kinds(splitter.push(" <")) == [("text", " ")]
    assert kinds(splitter.flush()) == [("text", "<")]


def test_whitespace_after_a_close_is_dropped_across_chunks_but_nowhere_else() -> None:
    pieces = run(["<think>r</think>", " ", "\n", "\n Answer", " \n", " end"])
    assert joined(pieces) == ("Answer \n end", "r")
    assert joined(run(["  lead  <think> r </think>"])) == ("  lead  ", " r ")


def test_a_stray_close_and_a_nested_open_are_dropped() -> None:
    assert joined(run(["visible</think> more"])) == ("visiblemore", "")
    assert joined(run(["<think>a<think>b</think>c"])) == ("c", "ab")


def test_logprobs_stay_with_the_visible_text_of_their_delta() -> None:
    lp = [(TokenLogprob(token=str(n), logprob=-float(n)),) for n in range(6)]
    splitter = ThinkSplitter()
    pieces = [
        *splitter.push("Hi", lp[0]),
        *splitter.push(" <th", lp[1]),
        *splitter.push("ink>", lp[2]),
        *splitter.push("why</think>", lp[3]),
        *splitter.push("\nok <", lp[4]),
        *splitter.push("3", lp[5]),
    ]
    assert [(p.text, p.logprobs) for p in pieces if isinstance(p, TextDelta)] == [
        ("Hi", lp[0]),
        (" ", lp[1]),
        ("ok ", lp[4]),
        ("<3", lp[5]),
    ]
    splitter = ThinkSplitter()
    assert splitter.push("<", lp[0]) == []
    assert splitter.push("b>", lp[1]) == [TextDelta("<b>", lp[0] + lp[1])]


# --- the async adapter ------------------------------------------------------------------


async def events_of(items: Sequence[OutputEvent]) -> AsyncIterator[OutputEvent]:
    for item in items:
        yield item


async def adapt(items: Sequence[OutputEvent], **options: bool) -> list[OutputEvent]:
    return [event async for event in split_reasoning(events_of(items), **options)]


FINISHED = Finished(reason="stop", usage=Usage(3, 4))


async def test_held_text_is_released_before_a_tool_call_and_the_terminal_event() -> None:
    call = ToolCallDelta(index=0, id="call_1", name="f", arguments="{}")
    out = await adapt([TextDelta("go <"), call, TextDelta("<think>plan <th"), FINISHED])
    assert out == [
        TextDelta("go "),
        TextDelta("<"),
        call,
        ReasoningDelta("plan "),
        ReasoningDelta("<th"),
        FINISHED,
    ]


async def test_held_text_is_released_before_a_failure_and_at_a_bare_end() -> None:
    failed = Failed(code="provider_gone", message="gone")
    assert await adapt([TextDelta("a</thi"), failed]) == [
        TextDelta("a"),
        TextDelta("</thi"),
        failed,
    ]
    assert await adapt([TextDelta("r <"), TextDelta("/t")], starts_in_reasoning=True) == [
        ReasoningDelta("r "),
        ReasoningDelta("</t"),
    ]


async def test_reasoning_the_provider_split_itself_passes_through() -> None:
    out = await adapt([ReasoningDelta("native"), TextDelta("<think>x</think>y"), FINISHED])
    assert out == [ReasoningDelta("native"), ReasoningDelta("x"), TextDelta("y"), FINISHED]


async def test_text_logprobs_survive_the_adapter() -> None:
    lp = (TokenLogprob(token="Hi", logprob=-0.5, top=(("Hi", -0.5),)),)
    assert await adapt([TextDelta("Hi", lp), FINISHED]) == [TextDelta("Hi", lp), FINISHED]
