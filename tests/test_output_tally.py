"""The receipt's tally of output (`receipts.OutputTally`): what it hashes is the text split
by the one `<think>` rule, whatever chunks the text came in and however much of it took the
fast path past the splitter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from moonflower.coordinator.tally import text_bytes
from moonflower.crypto.receipt import output_digest
from moonflower.generation import (
    Finished,
    GenerationEvent,
    OutputEvent,
    ReasoningDelta,
    Started,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from moonflower.reasoning import EventSplitter, ThinkSplitter, split_reasoning
from moonflower.receipts import OutputTally, ReceiptOutput

PIECES = st.sampled_from(["<think>", "</think>", "<", "<th", " ", "\n", "a", "é", "word ", "🌸"])


def tally_of(chunks: list[str], *, starts_in_reasoning: bool) -> OutputTally:
    tally = OutputTally()
    tally.add(Started(prompt_tokens=1, starts_in_reasoning=starts_in_reasoning))
    for chunk in chunks:
        tally.add(TextDelta(chunk, tokens=1))
    tally.add(Finished("stop", Usage(1, len(chunks))))
    return tally


def split_whole(text: str, *, starts_in_reasoning: bool) -> tuple[str, str]:
    splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
    pieces = splitter.push(text) + splitter.flush()
    visible = "".join(p.text for p in pieces if isinstance(p, TextDelta))
    reasoning = "".join(p.text for p in pieces if not isinstance(p, TextDelta))
    return visible, reasoning


@given(st.lists(st.lists(PIECES, max_size=6).map("".join), max_size=12), st.booleans())
def test_the_tally_splits_like_the_whole_text_read_at_once(
    chunks: list[str], starts_in_reasoning: bool
) -> None:
    tally = tally_of(chunks, starts_in_reasoning=starts_in_reasoning)
    visible, reasoning = split_whole("".join(chunks), starts_in_reasoning=starts_in_reasoning)
    assert tally.digest() == output_digest(visible, reasoning, [], "stop")
    whole = tally_of(["".join(chunks)], starts_in_reasoning=starts_in_reasoning)
    assert tally.digest() == whole.digest()


@given(st.text())
def test_text_bytes_is_the_utf8_length(text: str) -> None:
    assert text_bytes(text) == len(text.encode())


OUTPUT = st.one_of(
    st.lists(PIECES, min_size=1, max_size=4).map(lambda parts: TextDelta("".join(parts), tokens=1)),
    PIECES.map(ReasoningDelta),
    st.sampled_from(["{", '"a"', "}"]).map(lambda part: ToolCallDelta(0, part, tokens=1)),
)


@given(st.lists(OUTPUT, max_size=12), st.booleans())
def test_the_provider_signs_for_what_the_consumer_is_shown(
    events: list[GenerationEvent], starts_in_reasoning: bool
) -> None:
    """The provider's tally, the coordinator's receipt output (gathered from the pieces its
    channel split once, as they arrive) and the consumer's stream all hash alike, held text
    released before a reasoning or tool-call piece included."""
    started = Started(prompt_tokens=1, starts_in_reasoning=starts_in_reasoning)
    finished = Finished("stop", Usage(1, sum(getattr(e, "tokens", 0) for e in events)))
    provider = OutputTally()
    coordinator, split = ReceiptOutput(), EventSplitter()
    shown: list[OutputEvent] = []
    for event in [started, *events, finished]:
        provider.add(event)
        pieces = split.split(event)
        coordinator.add(pieces)
        shown += pieces
    coordinator.end(finished)
    assert provider.digest() == coordinator.digest() == digest_of(shown)
    consumer = asyncio.run(consumer_view(events, starts_in_reasoning=starts_in_reasoning))
    assert consumer == shown


def digest_of(shown: list[OutputEvent]) -> str:
    visible = "".join(p.text for p in shown if isinstance(p, TextDelta))
    reasoning = "".join(p.text for p in shown if isinstance(p, ReasoningDelta))
    arguments = "".join(p.arguments for p in shown if isinstance(p, ToolCallDelta))
    calls = [ToolCall("", "", arguments)] if arguments else []
    return output_digest(visible, reasoning, calls, "stop")


async def consumer_view(
    events: list[GenerationEvent], *, starts_in_reasoning: bool
) -> list[OutputEvent]:
    async def stream() -> AsyncIterator[OutputEvent]:
        for event in events:
            assert not isinstance(event, Started)
            yield event

    return [
        piece async for piece in split_reasoning(stream(), starts_in_reasoning=starts_in_reasoning)
    ]
