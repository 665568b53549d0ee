"""What one job produced, gathered from its output events: `CompletionBuilder` accumulates
text, reasoning, logprobs and tool-call pieces, and builds the `Completion` that dialects
render as a whole (non-streaming) answer.

Dialect-neutral and free of I/O: it knows the API-neutral generation events only, nothing of
wire shapes, jobs or requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moonflower.generation import (
    Finished,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
)


@dataclass
class _CallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class Completion:
    """Everything one job produced, gathered for a non-streaming answer."""

    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    logprobs: list[TokenLogprob]
    finished: Finished


class CompletionBuilder:
    """Accumulates output events; dialects that stream also use it to know the totals."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.calls: dict[int, _CallParts] = {}

    def add(self, event: TextDelta | ReasoningDelta | ToolCallDelta) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
            self.logprobs.extend(event.logprobs)
        elif isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        else:
            parts = self.calls.setdefault(event.index, _CallParts())
            parts.id = event.id or parts.id
            parts.name = event.name or parts.name
            parts.arguments.append(event.arguments)

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=p.id, name=p.name, arguments="".join(p.arguments))
            for _index, p in sorted(self.calls.items())
        ]

    def build(self, finished: Finished) -> Completion:
        return Completion(
            text="".join(self.text),
            reasoning="".join(self.reasoning),
            tool_calls=self.tool_calls(),
            logprobs=self.logprobs,
            finished=finished,
        )
