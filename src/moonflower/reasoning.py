"""Splits `<think>…</think>` reasoning out of generated text, across chunk boundaries.

Owns the one rule for what is reasoning and what is visible text, applied one event at a
time by `EventSplitter`: the coordinator's job channel splits each provider event once as
it arrives, and both what the consumer is shown (`Job.events()`) and what the receipt
hashes are that one result; a provider's receipt tally splits its own output the same way.
Every dialect gets the split events from `Job.events()` and must not look for think tags
itself. Nothing here knows about HTTP, dialects or providers.

The rule, for the text of one generation read as a whole (chunking never changes it):

- `<think>` opens a reasoning block and `</think>` closes it (case-sensitive). Text inside
  a block is emitted as `ReasoningDelta`s, text outside as `TextDelta`s; the tags
  themselves are never emitted.
- A block left open at the end is reasoning to the end. `starts_in_reasoning` (the chat
  template already opened a block in the prompt) means the output is reasoning until the
  first `</think>`.
- Blocks do not nest: a `<think>` inside a block is dropped and the block still ends at the
  first `</think>`. A `</think>` outside any block is dropped too (some models close a
  block their template opened without the provider saying so).
- Whitespace right after a `</think>` is formatting, not an answer: leading whitespace of
  the visible text that follows a closing tag is dropped, across chunks, up to the first
  non-whitespace character. Reasoning text is kept verbatim.
- A `<` that turns out not to start a tag is released as ordinary text.

Streaming stays streaming: only the tail that could still become a tag (from the last `<`,
at most `</think`) is held back; everything else is released
by the `push` that received it. Held text is flushed, as the kind it then is, before any
non-text event and at the end.

Log-probabilities: a `TextDelta`'s logprobs go with the first visible piece that contains
any of its text; if none of its text ends up visible (all reasoning, tag or stripped
whitespace) they are dropped.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from moonflower.generation import (
    Failed,
    Finished,
    GeneratedEvent,
    GenerationEvent,
    OutputEvent,
    ReasoningDelta,
    Started,
    TextDelta,
    TokenLogprob,
)

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
_TAGS = (OPEN_TAG, CLOSE_TAG)
_TAG = re.compile("|".join(re.escape(tag) for tag in _TAGS))

Piece = TextDelta | ReasoningDelta


@dataclass(slots=True)
class _Span:
    """Where one delta's text lies in the working buffer, while its logprobs are unplaced."""

    start: int
    end: int
    logprobs: tuple[TokenLogprob, ...]


class ThinkSplitter:
    """The pure state machine: feed text with `push`, end with `flush`.

    Each call returns the pieces it can release, never an empty one. Pieces are not joined
    across a dropped tag, so no piece ever contains a tag.
    """

    def __init__(self, *, starts_in_reasoning: bool = False) -> None:
        self.is_reasoning = starts_in_reasoning
        self._is_after_close = False
        self._held = ""
        self._spans: list[_Span] = []

    @property
    def held(self) -> str:
        """Text received but not yet released, because it could still become a tag."""
        return self._held

    def passes_through(self, text: str) -> bool:
        """Whether `text` is visible text as it stands: nothing held, outside reasoning, not
        right after a closing tag, and no `<` that could begin one (most deltas)."""
        return bool(text) and not (
            self._held or self.is_reasoning or self._is_after_close or "<" in text
        )

    def push(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> list[Piece]:
        buffer = self._held + text
        spans = self._spans
        if logprobs and text:  # a delta with no text has no visible piece to go with
            spans.append(_Span(len(self._held), len(buffer), logprobs))
        cut = ambiguous_tail_start(buffer)
        pieces = self._split(buffer, cut, spans)
        self._held = buffer[cut:]
        self._spans = [_Span(s.start - cut, s.end - cut, s.logprobs) for s in spans if s.end > cut]
        return pieces

    def flush(self) -> list[Piece]:
        """Release whatever is held, as the kind it is now (the stream ends or is interrupted
        by another kind of event, so it can no longer become a tag)."""
        buffer, spans = self._held, self._spans
        self._held, self._spans = "", []
        return self._split(buffer, len(buffer), spans)

    def unreleased(self) -> list[Piece]:
        """What `flush` would release now, leaving the splitter as it is (for a reader whose
        stream was cut short while the stream itself may still go on)."""
        if not self._held:
            return []
        copy = ThinkSplitter(starts_in_reasoning=self.is_reasoning)
        copy._is_after_close = self._is_after_close
        copy._held, copy._spans = self._held, list(self._spans)
        return copy.flush()

    def _split(self, buffer: str, cut: int, spans: list[_Span]) -> list[Piece]:
        pieces: list[Piece] = []
        position = 0
        for match in _TAG.finditer(buffer, 0, cut):
            self._release(pieces, buffer, position, match.start(), spans)
            if match.group() == OPEN_TAG:
                self.is_reasoning = True
            else:
                self.is_reasoning = False
                self._is_after_close = True
            position = match.end()
        self._release(pieces, buffer, position, cut, spans)
        return pieces

    def _release(
        self, pieces: list[Piece], buffer: str, start: int, end: int, spans: list[_Span]
    ) -> None:
        if start >= end:
            return
        if self.is_reasoning:
            pieces.append(ReasoningDelta(text=buffer[start:end]))
            return
        if self._is_after_close:
            start = end - len(buffer[start:end].lstrip())
            if start == end:
                return
            self._is_after_close = False
        owners = [s for s in spans if s.start < end and s.end > start]
        for owner in owners:
            spans.remove(owner)
        logprobs = tuple(lp for owner in owners for lp in owner.logprobs)
        pieces.append(TextDelta(text=buffer[start:end], logprobs=logprobs))


def ambiguous_tail_start(text: str) -> int:
    """Where the tail that is a proper prefix of a tag begins (`len(text)` if none).

    Tags contain one `<`, at their start, so only the last `<` can begin such a tail."""
    start = text.rfind("<")
    if start == -1:
        return len(text)
    tail = text[start:]
    if any(tag.startswith(tail) and tag != tail for tag in _TAGS):
        return start
    return len(text)


class EventSplitter:
    """One generation's events split as they come, each exactly once: a `TextDelta` into
    its visible and reasoning pieces, any other event preceded by the text held back so far.
    `Started` sets whether the output begins inside a reasoning block."""

    def __init__(self, *, starts_in_reasoning: bool = False) -> None:
        self._splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)

    def text(self, delta: TextDelta) -> list[Piece]:
        """The pieces of one text delta (most deltas pass through as they are)."""
        if self._splitter.passes_through(delta.text):
            return [delta]
        return self._splitter.push(delta.text, delta.logprobs)

    def flush(self) -> list[Piece]:
        return self._splitter.flush()

    def unreleased(self) -> list[Piece]:
        """The text held back so far, split as a flush would, without flushing it."""
        return self._splitter.unreleased()

    def split(self, event: GenerationEvent) -> Sequence[GeneratedEvent]:
        """What a consumer is shown of `event`, in order: its pieces (for a terminal event,
        only the held text it releases; for `Started`, nothing)."""
        if isinstance(event, TextDelta):  # nearly every event: checked first
            splitter = self._splitter
            if splitter.passes_through(event.text):
                return (event,)
            return splitter.push(event.text, event.logprobs)
        if isinstance(event, Started):
            self._splitter = ThinkSplitter(starts_in_reasoning=event.starts_in_reasoning)
            return []
        released: list[GeneratedEvent] = list(self._splitter.flush())
        if not isinstance(event, Finished | Failed):
            released.append(event)
        return released


async def split_reasoning(
    events: AsyncIterator[OutputEvent], *, starts_in_reasoning: bool = False
) -> AsyncIterator[OutputEvent]:
    """`events` with every `TextDelta` split into visible text and reasoning.

    Reasoning the provider already split off, tool-call pieces and the terminal event pass
    through unchanged, after whatever text was held back is released."""
    splitter = EventSplitter(starts_in_reasoning=starts_in_reasoning)
    async for event in events:
        if isinstance(event, TextDelta):
            for piece in splitter.text(event):
                yield piece
            continue
        for piece in splitter.flush():
            yield piece
        yield event
    for piece in splitter.flush():
        yield piece
