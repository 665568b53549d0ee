"""Sampled token pieces to output events: the engine-neutral tail of every generation loop.

Owns the pipeline a token's bytes go through after sampling: UTF-8 reassembly, stop-string
holdback (`stop_text`), shaping into text and tool calls (`tool_output`), attaching each
token's logprob to the text delta that carries the token's text, and the finish reason
(`tool_calls` when a call was made). Which shaper and which stop strings apply follows from
the request and its output constraint (`shaper_for`). An engine pushes `(bytes, logprob)`
per sampled token and yields what comes back.

Must not know about models, tokenizers or llama.cpp, and never logs text.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from moonflower.generation import (
    FinishReason,
    GeneratedEvent,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
)
from moonflower.prompting.tool_prompt import offered_tools
from moonflower.provider.engines.grammar import OutputConstraint
from moonflower.provider.engines.stop_text import StopTextScanner
from moonflower.provider.engines.tool_output import (
    ChoiceCallStream,
    ForcedCallStream,
    OutputShaper,
    PlainText,
    Shaped,
    ToolCallScanner,
)


def shaper_for(request: GenerationRequest, constraint: OutputConstraint | None) -> OutputShaper:
    """How the request's output becomes events: a forced call, a choice of calls, text with
    `<tool_call>` blocks (tools offered, nothing forced), or plain text."""
    if constraint is not None and constraint.kind == "call":
        return ForcedCallStream(constraint.tools[0].name)
    if constraint is not None and constraint.kind == "choice":
        return ChoiceCallStream(t.name for t in constraint.tools)
    tools = offered_tools(request)
    if constraint is None and tools:
        return ToolCallScanner(t.name for t in tools)
    return PlainText()


def stops_for(request: GenerationRequest, constraint: OutputConstraint | None) -> tuple[str, ...]:
    """Stop strings apply to text; a forced call's arguments run until the grammar ends."""
    if constraint is not None and constraint.kind in ("call", "choice"):
        return ()
    return request.stop


@dataclass(slots=True)
class _Waiting:
    """A token's logprob waiting for its text to be sent; `end` is the decoded length up to
    the end of its text (None while the token is only part of a character)."""

    logprob: TokenLogprob
    end: int | None


class OutputAssembler:
    """Token bytes (and logprobs) in, `TextDelta`/`ToolCallDelta` events out."""

    def __init__(self, shaper: OutputShaper, stops: Iterable[str]) -> None:
        # "replace": bytes that can never become valid UTF-8 show as U+FFFD rather than
        # vanish; an incomplete sequence is only held, never replaced, until the end.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._scanner = StopTextScanner(stops)
        self._shaper = shaper
        self._decoded = 0
        self._released = 0
        self._waiting: deque[_Waiting] = deque()
        self._undelivered_tokens = 0

    @property
    def stopped(self) -> str | None:
        """The stop string that ended the output, if one did."""
        return self._scanner.stopped

    def push(self, piece: bytes, logprob: TokenLogprob | None = None) -> list[GeneratedEvent]:
        self._undelivered_tokens += 1
        text = self._decoder.decode(piece)
        self._decoded += len(text)
        if text:
            for waiting in self._waiting:
                if waiting.end is None:
                    waiting.end = self._decoded
        if logprob is not None:
            self._waiting.append(_Waiting(logprob, self._decoded if text else None))
        released = self._scanner.push(text).text
        self._released += len(released)
        return self._events(self._shaper.push(released) if released else [])

    def finish(self, *, complete: bool) -> list[GeneratedEvent]:
        """The events still held when generation ends. A character cut off by the end is
        dropped: its bytes alone are not text. `complete`: the model ended the output itself
        (end of generation or a stop string) rather than being cut short."""
        rest = self._scanner.flush()
        self._released += len(rest)
        shaped = self._shaper.push(rest) if rest else []
        shaped += self._shaper.flush(complete=complete)
        return self._events(shaped)

    def finish_reason(self, ended: FinishReason) -> FinishReason:
        """`stop` becomes `tool_calls` when the output made a call."""
        return "tool_calls" if ended == "stop" and self._shaper.calls else ended

    def _events(self, shaped: list[Shaped]) -> list[GeneratedEvent]:
        consumed = self._released - self._shaper.held
        ready: list[TokenLogprob] = []
        while self._waiting:
            end = self._waiting[0].end
            if end is None or end > consumed:
                break
            ready.append(self._waiting.popleft().logprob)
        events: list[TextDelta | ToolCallDelta] = []
        for item in shaped:
            if isinstance(item, str):
                # Logprobs of tokens spent on tool calls have no text delta to ride on.
                events.append(TextDelta(item, tuple(ready)))
                ready = []
            else:
                events.append(item)
        if events:  # every token sampled so far is delivered with the last of them
            events[-1] = dataclasses.replace(events[-1], tokens=self._undelivered_tokens)
            self._undelivered_tokens = 0
        return list(events)
