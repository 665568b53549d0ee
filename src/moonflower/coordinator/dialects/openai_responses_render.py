"""Renders one job's output events as the OpenAI Responses API does: a whole `response`
object, or the typed event stream (`event: <type>` frames, each carrying `sequence_number`)
emitted as the events arrive, closed by a `data: [DONE]` line after the terminal event as
the Open Responses specification requires (OpenAI's SDKs stop reading at it).

Output items follow the order the model produced them: a `reasoning` item for `<think>`
text, a `message` item for visible text, one `function_call` item per tool call. The
whole object is built by replaying the gathered completion through the same state machine
the stream uses, so both forms always agree.

Every `response` object, whole or inside an event, carries every field OpenAI's API and the
Open Responses specification send, unset ones included (as null, or the value that applied):
its sampling values are those the job ran with (`SamplingParams` after the model's
recommended defaults were filled in), an unset knob reported as the engine's default. The
`error` event carries OpenAI's flat `code`/`message`/`param` and Open Responses' nested
`error` object. It does not dispatch, frame SSE bytes itself beyond `sse.frame`, or choose
HTTP status codes; failures are described by `openai_errors`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.completion import Completion
from moonflower.coordinator.dialects import openai_errors
from moonflower.coordinator.dialects.openai_chat_render import token_logprob
from moonflower.generation import (
    Failed,
    Finished,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

ItemType = Literal["message", "reasoning", "function_call"]
Status = Literal["in_progress", "completed", "incomplete"]
_ID_PREFIX: dict[ItemType, str] = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_"}


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


@dataclass
class _Item:
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
        self.id = self.id or _new_id(_ID_PREFIX[self.type])

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


class _OutputItems:
    """The state machine from output events to items and their stream event payloads."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.open: _Item | None = None

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
            item = _Item(
                "function_call",
                len(self.items),
                call_id=delta.id or _new_id("call_"),
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
        return self._close("completed") + self._opened(_Item(kind, len(self.items)))

    def _opened(self, item: _Item) -> list[dict[str, Any]]:
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


class ResponsesRenderer:
    """Renders one job's events as an OpenAI `response` object or its event stream."""

    def __init__(
        self,
        *,
        model: str,
        max_output_tokens: int | None,
        echo: dict[str, Any],
        sampling: SamplingParams,
    ) -> None:
        """`echo` holds the request-only settings the parser gathered (`ResponsesCall.echo`);
        `sampling` is what the job runs with (unset knobs: the engine's defaults)."""
        self.id = _new_id("resp_")
        self.created_at = int(time.time())
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.sampling = _sampling(sampling)
        self.echo = echo
        self._items = _OutputItems()
        self._sequence = 0
        self._final: dict[str, Any] | None = None
        self._receipt: Receipted | None = None

    def response(self, done: Completion) -> dict[str, Any]:
        """The whole `response` object for a finished generation."""
        for event in _replay(done):
            self._on(event)
        assert self._final is not None
        return self._final

    async def stream(self, events: AsyncIterator[OutputEvent]) -> AsyncIterator[bytes]:
        initial = self.body("in_progress")
        yield self._frame({"type": "response.created", "response": initial})
        yield self._frame({"type": "response.in_progress", "response": initial})
        async for event in events:
            for payload in self._on(event):
                yield self._frame(payload)
            if self._final is not None:
                yield sse.DONE
                return
        failure = Failed(code="provider_gone", message="The provider's stream ended early.")
        for payload in self._on(failure):
            yield self._frame(payload)
        yield sse.DONE

    def body(
        self,
        status: Literal["in_progress", "completed", "incomplete", "failed"],
        *,
        usage: Usage | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        output = self._items.wire()
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False,
            "error": error,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "model": self.model,
            "output": output,
            "output_text": _output_text(output),
            "previous_response_id": None,
            "service_tier": "default",
            "store": False,
            "truncation": "disabled",
            "usage": _usage(usage) if usage is not None else None,
            **self.sampling,
            **self.echo,
        }
        return body

    def _on(self, event: OutputEvent) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return self._items.text(event)
        if isinstance(event, ReasoningDelta):
            return self._items.reasoning(event)
        if isinstance(event, ToolCallDelta):
            return self._items.tool_call(event)
        if isinstance(event, Receipted):
            self._receipt = event
            return []
        if isinstance(event, Finished) and event.reason != "cancelled":
            is_cut_short = event.reason == "length"
            payloads = self._items.finish(is_cut_short=is_cut_short)
            status: Literal["completed", "incomplete"] = (
                "incomplete" if is_cut_short else "completed"
            )
            self._final = self.body(status, usage=event.usage)
            return [
                *payloads,
                *self._receipt_event(),
                {"type": f"response.{status}", "response": self._final},
            ]
        return self._failed(event)

    def _receipt_event(self) -> list[dict[str, Any]]:
        """The provider's signed receipt just before the terminal event (and its `error`
        event). Not an OpenAI event type: the SDKs pass unknown types through untouched."""
        if self._receipt is None:
            return []
        return [{"type": "moonflower.receipt", "receipt": self._receipt.payload()}]

    def _failed(self, event: Finished | Failed) -> list[dict[str, Any]]:
        self._items.abandon()
        described = openai_errors.stream_error(event)["error"]
        code = "invalid_prompt" if described["type"] == "invalid_request_error" else "server_error"
        self._final = self.body("failed", error={"code": code, "message": described["message"]})
        # Open Responses wants `response.failed` right after `error`: the receipt goes first.
        return [
            *self._receipt_event(),
            _error_event(described),
            {"type": "response.failed", "response": self._final},
        ]

    def _frame(self, payload: dict[str, Any]) -> bytes:
        kind = payload["type"]
        data = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return sse.frame(data, event=kind)


def _replay(done: Completion) -> Iterator[OutputEvent]:
    if done.reasoning:
        yield ReasoningDelta(done.reasoning)
    if done.text:
        yield TextDelta(done.text, logprobs=tuple(done.logprobs))
    for index, call in enumerate(done.tool_calls):
        yield ToolCallDelta(index=index, arguments=call.arguments, id=call.id, name=call.name)
    yield done.finished


def _output_text(output: list[dict[str, Any]]) -> str:
    return "".join(
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def _sampling(sampling: SamplingParams) -> dict[str, float]:
    """The sampling fields of a response: a knob still unset was the engine's default
    (temperature 1, top_p 1, no penalties; `sampling.sampler_settings`)."""
    return {
        "temperature": 1.0 if sampling.temperature is None else sampling.temperature,
        "top_p": 1.0 if sampling.top_p is None else sampling.top_p,
        "presence_penalty": sampling.presence_penalty or 0.0,
        "frequency_penalty": sampling.frequency_penalty or 0.0,
    }


def _logprobs(logprobs: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    return [token_logprob(lp) for lp in logprobs]


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def stream_error_frames(exc: errors.MoonflowerError) -> bytes:
    """A stream that failed before `response.created`: one `error` event, then `[DONE]`."""
    _status, described = openai_errors.status_and_body(exc)
    payload = {"type": "error", "sequence_number": 0, **_error_event(described["error"])}
    return sse.frame(payload, event="error") + sse.DONE


def _error_event(error: dict[str, Any]) -> dict[str, Any]:
    """An `error` event from OpenAI's error object: OpenAI's event has its fields at the top,
    Open Responses' nests them under `error`; both are sent, so either kind of client reads
    it."""
    fields = {"code": error["code"], "message": error["message"], "param": error["param"]}
    nested = {"type": error["type"], **fields}
    return {"type": "error", **fields, "error": nested}
