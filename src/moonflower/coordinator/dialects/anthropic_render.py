"""Renders one job's output events as Anthropic Messages objects: the named stream events
(`message_start`, `content_block_*`, `ping`, `message_delta`, `message_stop`, or `error` on
failure), and the whole `message`, which is those events folded (`MessageFold`).

Content blocks come in the order the model produced them: `thinking` (only when the caller
enabled thinking), `text`, `tool_use`. Thinking blocks carry an empty `signature`: the field
is required by Anthropic's schema, but nothing here signs reasoning (receipts cover the
job), and history sent back is not verified. It does not dispatch or choose HTTP statuses.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import orjson

from moonflower.coordinator import sse
from moonflower.coordinator.dialects import anthropic_errors
from moonflower.generation import (
    Failed,
    Finished,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    TextDelta,
    ToolCallDelta,
)

log = logging.getLogger(__name__)

SIGNATURE = ""
"""What every thinking block carries as its `signature` (see the module docstring)."""

BlockKind = Literal["thinking", "text", "tool_use"]

_BLOCK_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


class MessageRenderer:
    """Renders one job's events as Anthropic `message` objects, whole or streamed."""

    def __init__(self, *, model: str, prompt_tokens: int, is_thinking: bool) -> None:
        self.id = "msg_" + secrets.token_hex(12)
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.is_thinking = is_thinking

    def fold(self) -> MessageFold:
        return MessageFold()

    def envelope(
        self,
        content: list[dict[str, Any]],
        reason: str | None,
        stop_sequence: str | None,
        usage_body: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": stop_sequence,
            "stop_details": None,
            "container": None,
            "usage": usage_body,
        }

    def stream(self, events: AsyncIterator[OutputEvent]) -> AsyncGenerator[sse.Event, None]:
        return _MessageStream(self).frames(events)


class _MessageStream:
    """The state of one streamed message: which content block is open, and its index."""

    def __init__(self, renderer: MessageRenderer) -> None:
        self.renderer = renderer
        self.open_kind: BlockKind | None = None
        self.open_call: int | None = None
        self.next_index = 0
        self.calls: dict[int, tuple[str, str]] = {}
        self.receipt: Receipted | None = None

    async def frames(self, events: AsyncIterator[OutputEvent]) -> AsyncGenerator[sse.Event, None]:
        start = self.renderer.envelope([], None, None, usage(self.renderer.prompt_tokens, 0))
        yield _event("message_start", {"type": "message_start", "message": start})
        async for event in events:
            for frame in self._render(event):
                yield frame
            if isinstance(event, Finished | Failed):
                return
        failure = Failed(code="provider_gone", message="The provider's stream ended early.")
        yield _event("error", anthropic_errors.stream_error(failure))

    def _render(self, event: OutputEvent) -> list[sse.Event]:
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            return [*self._open("text"), self._delta({"type": "text_delta", "text": event.text})]
        if isinstance(event, ReasoningDelta):
            if not (event.text and self.renderer.is_thinking):
                return []
            delta = {"type": "thinking_delta", "thinking": event.text}
            return [*self._open("thinking"), self._delta(delta)]
        if isinstance(event, ToolCallDelta):
            frames = self._open_call(event)
            if event.arguments:
                frames.append(
                    self._delta({"type": "input_json_delta", "partial_json": event.arguments})
                )
            return frames
        if isinstance(event, Receipted):
            self.receipt = event
            return []
        if isinstance(event, Finished) and event.reason != "cancelled":
            return self._finish(event)
        return [_event("error", anthropic_errors.stream_error(event))]

    def _open(self, kind: BlockKind) -> list[sse.Event]:
        if self.open_kind == kind:
            return []
        block = thinking_block("", SIGNATURE) if kind == "thinking" else text_block("")
        return [*self._close(), *self._start(kind, block)]

    def _open_call(self, delta: ToolCallDelta) -> list[sse.Event]:
        if self.open_kind == "tool_use" and self.open_call == delta.index:
            return []
        if delta.index not in self.calls:
            self.calls[delta.index] = (tool_use_id(delta.id), delta.name or "")
        call_id, name = self.calls[delta.index]
        frames = [*self._close(), *self._start("tool_use", _tool_start(call_id, name))]
        self.open_call = delta.index
        return frames

    def _start(self, kind: BlockKind, block: dict[str, Any]) -> list[sse.Event]:
        frames = [
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": self.next_index, "content_block": block},
            )
        ]
        if self.next_index == 0:
            frames.append(_event("ping", {"type": "ping"}))
        self.open_kind = kind
        self.next_index += 1
        return frames

    def _close(self) -> list[sse.Event]:
        if self.open_kind is None:
            return []
        frames = []
        if self.open_kind == "thinking":
            frames.append(self._delta({"type": "signature_delta", "signature": SIGNATURE}))
        index = self.next_index - 1
        frames.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        self.open_kind = None
        self.open_call = None
        return frames

    def _delta(self, delta: dict[str, Any]) -> sse.Event:
        body = {"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}
        return _event("content_block_delta", body)

    def _finish(self, finished: Finished) -> list[sse.Event]:
        # An answer with no content at all still has one (empty) text block, as the whole
        # message does, so clients can always read `content[0]`.
        frames = [] if self.next_index else self._open("text")
        frames += self._close()
        message_delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(finished, has_tool_calls=bool(self.calls)),
                "stop_sequence": finished.stop_sequence,
                "stop_details": None,
                "container": None,
            },
            "usage": delta_usage(self.renderer.prompt_tokens, finished.usage.completion_tokens),
        }
        frames.append(_event("message_delta", message_delta))
        if self.receipt is not None:
            # The provider's signed receipt, just before the terminal event, under an event
            # name Anthropic does not use: the SDKs' stream helpers ignore it, and their raw
            # event iterators hand it over as an event of a type they do not know.
            payload = {"type": "moonflower_receipt", "receipt": self.receipt.payload()}
            frames.append(_event("moonflower_receipt", payload))
        frames.append(_event("message_stop", {"type": "message_stop"}))
        return frames


def _event(name: str, data: dict[str, Any]) -> sse.Event:
    return sse.Event(data, name)


class MessageFold:
    """Gathers the stream's events into the whole `message`, as Anthropic's SDKs accumulate
    a stream: `message_start` gives the envelope, each content block is built from its start
    and deltas (a tool call's `input` parsed from its joined `partial_json`), and
    `message_delta` gives the stop reason and output tokens. `ping`, `message_stop` and the
    receipt event add nothing: a whole answer carries its receipt in headers."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.blocks: list[dict[str, Any]] = []
        self.pieces: list[list[str]] = []
        """Each block's text, thinking or tool-call JSON, in pieces."""

    def add(self, item: sse.Event) -> None:
        data = item.data
        kind = data["type"]
        if kind == "message_start":
            self.message = {**data["message"], "usage": dict(data["message"]["usage"])}
        elif kind == "content_block_start":
            self.blocks.append(dict(data["content_block"]))
            self.pieces.append([])
        elif kind == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "signature_delta":
                self.blocks[data["index"]]["signature"] = delta["signature"]
            else:
                self.pieces[data["index"]].append(delta[_DELTA_FIELDS[delta["type"]]])
        elif kind == "message_delta" and self.message is not None:
            self.message.update(data["delta"])
            self.message["usage"]["input_tokens"] = data["usage"]["input_tokens"]
            self.message["usage"]["output_tokens"] = data["usage"]["output_tokens"]

    def result(self) -> dict[str, Any]:
        assert self.message is not None
        assert self.message["stop_reason"] is not None
        content = []
        for block, pieces in zip(self.blocks, self.pieces, strict=True):
            joined = "".join(pieces)
            if block["type"] == "tool_use":
                content.append({**block, "input": tool_input(joined)})
            else:
                field = "thinking" if block["type"] == "thinking" else "text"
                content.append({**block, field: joined})
        return {**self.message, "content": content}


_DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text, "citations": None}


def thinking_block(thinking: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": thinking, "signature": signature}


def _tool_start(call_id: str, name: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {}, "caller": _DIRECT}


_DIRECT = {"type": "direct"}


def tool_use_id(raw: str | None) -> str:
    """The engine's call id when Anthropic's pattern allows it, else a fresh `toolu_` id."""
    if raw and _BLOCK_ID.match(raw):
        return raw
    return "toolu_" + secrets.token_hex(12)


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` must be."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        # Sizes only: the arguments are completion text.
        log.warning("tool call arguments (%d chars) are not a JSON object", len(arguments))
        return {}
    return value


def stop_reason(finished: Finished, *, has_tool_calls: bool) -> str:
    if finished.reason == "length":
        return "max_tokens"
    if finished.reason == "tool_calls" or has_tool_calls:
        return "tool_use"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
        "server_tool_use": None,
        "service_tier": "standard",
        "inference_geo": None,
        "output_tokens_details": None,
    }


def delta_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """`message_delta` usage: cumulative totals, as Anthropic sends them."""
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "server_tool_use": None,
        "output_tokens_details": None,
    }
