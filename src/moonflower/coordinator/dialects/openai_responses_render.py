"""Renders one job's output events as the OpenAI Responses API does: the typed event stream
(`event: <type>` objects, each carrying `sequence_number`) emitted as the events arrive,
which the SSE layer closes with a `data: [DONE]` line after the terminal event as the Open
Responses specification requires (OpenAI's SDKs stop reading at it). The whole `response`
object is the stream folded (`ResponseFold`): the one its terminal event carries, so both
forms always agree.

Output items follow the order the model produced them (`openai_responses_items` builds
them).

Every `response` object, whole or inside an event, carries every field OpenAI's API and the
Open Responses specification send, unset ones included (as null, or the value that applied):
its sampling values are those the job ran with (`SamplingParams` after the model's
recommended defaults were filled in), an unset knob reported as the engine's default. The
`error` event carries OpenAI's flat `code`/`message`/`param` and Open Responses' nested
`error` object. It does not dispatch, frame SSE bytes, or choose HTTP status codes;
failures are described by `openai_errors`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.dialects import openai_errors
from moonflower.coordinator.dialects.openai_responses_items import OutputItems, new_id
from moonflower.generation import (
    Failed,
    Finished,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    Usage,
)


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
        self.id = new_id("resp_")
        self.created_at = int(time.time())
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.sampling = _sampling(sampling)
        self.echo = echo
        self._items = OutputItems()
        self._sequence = 0
        self._final: dict[str, Any] | None = None
        self._receipt: Receipted | None = None

    def fold(self) -> ResponseFold:
        return ResponseFold()

    async def stream(self, events: AsyncIterator[OutputEvent]) -> AsyncGenerator[sse.Event, None]:
        initial = self.body("in_progress")
        yield self._frame({"type": "response.created", "response": initial})
        yield self._frame({"type": "response.in_progress", "response": initial})
        async for event in events:
            for payload in self._on(event):
                yield self._frame(payload)
            if self._final is not None:
                return
        failure = Failed(code="provider_gone", message="The provider's stream ended early.")
        for payload in self._on(failure):
            yield self._frame(payload)

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

    def _frame(self, payload: dict[str, Any]) -> sse.Event:
        kind = payload["type"]
        data = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return sse.Event(data, kind)


class ResponseFold:
    """The whole `response` object: the one the stream's `response.completed` or
    `response.incomplete` event carries. (Other events add nothing: they built it.)"""

    TERMINAL = frozenset({"response.completed", "response.incomplete"})

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None

    def add(self, item: sse.Event) -> None:
        if item.name in self.TERMINAL:
            self.response = item.data["response"]

    def result(self) -> dict[str, Any]:
        assert self.response is not None
        return self.response


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


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def stream_error_event(exc: errors.MoonflowerError) -> sse.Event:
    """A stream that failed before `response.created`: one `error` event (then `[DONE]`)."""
    _status, described = openai_errors.status_and_body(exc)
    payload = {"type": "error", "sequence_number": 0, **_error_event(described["error"])}
    return sse.Event(payload, "error")


def _error_event(error: dict[str, Any]) -> dict[str, Any]:
    """An `error` event from OpenAI's error object: OpenAI's event has its fields at the top,
    Open Responses' nests them under `error`; both are sent, so either kind of client reads
    it."""
    fields = {"code": error["code"], "message": error["message"], "param": error["param"]}
    nested = {"type": error["type"], **fields}
    return {"type": "error", **fields, "error": nested}
