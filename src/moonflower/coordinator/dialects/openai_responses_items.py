"""OpenAI Responses API: the output items of one job as its events arrive — a `reasoning`
item for `<think>` text, a `message` item for visible text, one `function_call` item per
tool call, in the order the model produced them — and the stream event payloads each step
emits (`response.output_item.added`, `….delta`, `….done`, …).

One state machine serves both forms of an answer: the renderer feeds it a job's events as
they come, and a whole answer is the `response` its stream ends with. It builds
payloads only: sequence numbers, the `response` object and SSE framing belong to
`openai_responses_render`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from moonflower.coordinator.dialects.openai_chat_render import token_logprob
from moonflower.generation import ReasoningDelta, TextDelta, TokenLogprob, ToolCallDelta

ItemType = Literal["message", "reasoning", "function_call"]
Status = Literal["in_progress", "completed", "incomplete"]
_ID_PREFIX: dict[ItemType, str] = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_"}


def new_id(prefix: str) -> str:
    """An id as OpenAI shapes them (`resp_…`, `msg_…`): a type prefix, then 48 random hex."""
    return prefix + secrets.token_hex(24)


@dataclass
class OutputItem:
    """One output item as it is being generated."""

    type: ItemType
    output_index: int
    id: str = ""
    status: Status = "in_progress"
    parts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    tool_index: int | None = None

    def __post_init__(self) -> None:
        self.id = self.id or new_id(_ID_PREFIX[self.type])

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def wire(self) -> dict[str, Any]:
        if self.type == "function_call":
            return {
                "type": "function_call",
                "id": self.id,
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.text,
                "status": self.status,
            }
        content = [] if self.status == "in_progress" else [self.part()]
        if self.type == "message":
            return {
                "type": "message",
                "id": self.id,
                "status": self.status,
                "role": "assistant",
                "content": content,
            }
        return {
            "type": "reasoning",
            "id": self.id,
            "summary": [],
            "content": content,
            "status": self.status,
        }

    def part(self) -> dict[str, Any]:
        if self.type == "reasoning":
            return {"type": "reasoning_text", "text": self.text}
        return {
            "type": "output_text",
            "text": self.text,
            "annotations": [],
            "logprobs": list(self.logprobs),
        }

    def where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.output_index, "content_index": 0}


class OutputItems:
    """The state machine from output events to items and their stream event payloads."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []
        self.open: OutputItem | None = None

    def text(self, delta: TextDelta) -> list[dict[str, Any]]:
        if not delta.text:
            return []
        events = self._switch_to("message")
        logprobs = _logprobs(delta.logprobs)
        assert self.open is not None
        self.open.logprobs += logprobs
        return [*events, self._append(delta.text, "response.output_text.delta", logprobs=logprobs)]

    def reasoning(self, delta: ReasoningDelta) -> list[dict[str, Any]]:
        if not delta.text:
            return []
        events = self._switch_to("reasoning")
        return [*events, self._append(delta.text, "response.reasoning_text.delta")]

    def tool_call(self, delta: ToolCallDelta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self.open
        if item is None or item.type != "function_call" or item.tool_index != delta.index:
            events = self._close("completed")
            item = OutputItem(
                "function_call",
                len(self.items),
                call_id=delta.id or new_id("call_"),
                name=delta.name or "",
                tool_index=delta.index,
            )
            events += self._opened(item)
        if delta.name and not item.name:
            item.name = delta.name
        if delta.arguments:
            item.parts.append(delta.arguments)
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item.id,
                    "output_index": item.output_index,
                    "delta": delta.arguments,
                }
            )
        return events

    def finish(self, *, is_cut_short: bool) -> list[dict[str, Any]]:
        """Close the last item; an answer always has a message or a function call."""
        events: list[dict[str, Any]] = []
        if not any(item.type != "reasoning" for item in self.items):
            events += self._switch_to("message")
        return events + self._close("incomplete" if is_cut_short else "completed")

    def abandon(self) -> None:
        """The generation failed: the open item stays as far as it got, without done events."""
        if self.open is not None:
            self.open.status = "incomplete"
            self.open = None

    def wire(self) -> list[dict[str, Any]]:
        return [item.wire() for item in self.items]

    def _switch_to(self, kind: ItemType) -> list[dict[str, Any]]:
        if self.open is not None and self.open.type == kind:
            return []
        return self._close("completed") + self._opened(OutputItem(kind, len(self.items)))

    def _opened(self, item: OutputItem) -> list[dict[str, Any]]:
        self.items.append(item)
        self.open = item
        events = [
            {
                "type": "response.output_item.added",
                "output_index": item.output_index,
                "item": item.wire(),
            }
        ]
        if item.type != "function_call":
            part = {**item.part(), "text": ""}
            events.append({"type": "response.content_part.added", **item.where(), "part": part})
        return events

    def _append(self, text: str, kind: str, **extra: Any) -> dict[str, Any]:
        assert self.open is not None
        self.open.parts.append(text)
        return {"type": kind, **self.open.where(), "delta": text, **extra}

    def _close(self, status: Status) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        item.status = status
        events: list[dict[str, Any]]
        if item.type == "function_call":
            events = [
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item.id,
                    "output_index": item.output_index,
                    "name": item.name,
                    "arguments": item.text,
                }
            ]
        else:
            text_done: dict[str, Any] = {"text": item.text}
            if item.type == "message":
                text_done["logprobs"] = list(item.logprobs)
            kind = "output_text" if item.type == "message" else "reasoning_text"
            events = [
                {"type": f"response.{kind}.done", **item.where(), **text_done},
                {"type": "response.content_part.done", **item.where(), "part": item.part()},
            ]
        done = {"type": "response.output_item.done", "output_index": item.output_index}
        return [*events, {**done, "item": item.wire()}]


def _logprobs(logprobs: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    return [token_logprob(lp) for lp in logprobs]
