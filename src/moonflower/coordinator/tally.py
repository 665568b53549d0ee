"""What the coordinator counts of one job as its provider's frames arrive, and the rules the
provider's counts must keep. `JobTally` is the one accumulator of what a provider relayed:
the relay, the close path and the receipt check read their counts from it.

A provider says how many tokens each delta carries and how long its prompt was; nothing
forces it to tell the truth. The coordinator keeps two counts. The *claimed* count is the
provider's own (its receipt must state exactly that, so an honest provider always matches).
The *billable* count is what the coordinator can vouch for: each delta's claim bounded by
what its bytes can hold (a sampled token yields at least one byte of text, and a tool call's
scaffolding — its tags and name — a bounded number more), never above `max_tokens`.

A provider that claims more than `max_tokens`, sends more events than its flow-control
window allows, more bytes than its claimed tokens can carry, output before `started`, or
anything after its terminal event breaks the protocol: `add` returns why, and the job's
channel cuts the provider off. Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from moonflower import wire
from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
)

TOOL_CALL_SCAFFOLD_TOKENS = 64
"""Tokens a tool call may spend beyond the bytes it delivers: the tags and JSON around its
name and arguments, which the provider's shaper consumes (the first piece of each call)."""
MAX_BYTES_PER_TOKEN = 1024
"""Bytes of output one claimed token may carry: far above any vocabulary's longest piece,
and what bounds a job's output (and a whole answer's memory) by its `max_tokens`."""
BYTE_ALLOWANCE = 4096
"""Bytes allowed beyond `MAX_BYTES_PER_TOKEN` per claimed token (the first events of a
batch carry no tokens of their own: the batch's count rides on its last event)."""
EVENTS_PER_TOKEN = 4
"""Events one claimed token may produce (a text piece and the pieces of a tool call)."""
EVENT_ALLOWANCE = 16


def text_bytes(text: str) -> int:
    """The UTF-8 length of `text` (without encoding it when it is ASCII, as most is)."""
    return len(text) if text.isascii() else len(text.encode())


def delta_bytes(event: TextDelta | ReasoningDelta | ToolCallDelta) -> int:
    """The bytes of output an event carries, as the consumer will receive them."""
    if isinstance(event, ToolCallDelta):
        return (
            text_bytes(event.arguments) + text_bytes(event.name or "") + text_bytes(event.id or "")
        )
    return text_bytes(event.text)


def billable_tokens(event: GenerationEvent) -> int:
    """The tokens of `event` the coordinator can vouch for: the claim, bounded by what the
    event's bytes can hold."""
    if isinstance(event, TextDelta):
        # No character is shorter than a byte: a claim within the text's length stands.
        text = event.text
        return event.tokens if event.tokens <= len(text) else min(event.tokens, text_bytes(text))
    if isinstance(event, ToolCallDelta):
        scaffold = TOOL_CALL_SCAFFOLD_TOKENS if event.name is not None else 0
        return min(event.tokens, delta_bytes(event) + scaffold)
    return 0


@dataclass
class JobTally:
    """One job's counts as its frames arrive (see the module docstring)."""

    max_tokens: int
    context_length: int
    granted_events: int = wire.FLOW_WINDOW_EVENTS
    """Events the provider may send before more credit: its window plus every grant."""
    events: int = 0
    """Non-terminal events received."""
    claimed_prompt_tokens: int | None = None
    claimed_tokens: int = 0
    relayed_tokens: int = 0
    """Billable completion tokens relayed so far: each delta's `billable_tokens`."""
    output_bytes: int = 0
    terminal: Finished | Failed | None = None

    def grant(self, events: int) -> None:
        self.granted_events += events

    def add(self, event: GenerationEvent) -> str | None:
        """Count `event`; the reason it breaks the protocol, or None."""
        if self.terminal is not None:
            return "an event after the job's terminal event"
        if isinstance(event, TextDelta):  # nearly every event: checked first
            size, billable = text_bytes(event.text), billable_tokens(event)
            return self._count_output(event.tokens, size, billable, event.kind)
        if isinstance(event, ToolCallDelta):
            size, billable = delta_bytes(event), billable_tokens(event)
            return self._count_output(event.tokens, size, billable, event.kind)
        if isinstance(event, ReasoningDelta):
            return self._count_output(0, text_bytes(event.text), 0, event.kind)
        if isinstance(event, Finished | Failed):
            self.terminal = event
            return self._check_end(event) if isinstance(event, Finished) else None
        self.events += 1
        if self.events > self.granted_events:
            return "more events than the flow-control window allows"
        if self.claimed_prompt_tokens is not None:
            return "started twice"
        if event.prompt_tokens > self.context_length:
            return "a prompt longer than the model's context"
        self.claimed_prompt_tokens = event.prompt_tokens
        return None

    def _count_output(self, tokens: int, size: int, billable: int, kind: str) -> str | None:
        events = self.events = self.events + 1
        if events > self.granted_events:
            return "more events than the flow-control window allows"
        if self.claimed_prompt_tokens is None:
            return f"{kind} before started"
        claimed = self.claimed_tokens = self.claimed_tokens + tokens
        if claimed > self.max_tokens:
            return "more completion tokens than max_tokens"
        self.output_bytes += size
        if self.output_bytes > MAX_BYTES_PER_TOKEN * claimed + BYTE_ALLOWANCE:
            return "more output bytes than its tokens can carry"
        if events > EVENTS_PER_TOKEN * claimed + EVENT_ALLOWANCE:
            return "more events than its tokens can produce"
        self.relayed_tokens += billable
        return None

    def _check_end(self, event: Finished) -> str | None:
        if event.usage.completion_tokens != self.claimed_tokens:
            return "finished with a completion count other than its deltas'"
        started = self.claimed_prompt_tokens
        if started is not None and event.usage.prompt_tokens != started:
            return "finished with a prompt count other than it started with"
        return None
