"""What a consumer received, read back from a recorded SSE stream of any dialect.

Owns reading SSE bytes into events, and each dialect's events into a `Received` (the deltas
joined, as a client shows them) together with the provider's receipt the stream carried
just before its end. A stream that ends in an error event is `failed`; one that stops
without a finish is `cancelled`. Finish reasons map as in `moonflower.client.recorded`.
It must not verify anything, and does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from moonflower.client.recorded import (
    ANTHROPIC_FINISH,
    CHAT_FINISH,
    CarriedReceipt,
    Dialect,
    Recorded,
    carried_receipt,
    decode,
    json_object,
    neutral_finish,
    reading,
    responses_finish,
    text_of,
)
from moonflower.client.verify import Received
from moonflower.errors import UnreadableResponse
from moonflower.generation import ToolCall

Events = list[tuple[str | None, str]]


def from_stream(data: bytes | str, dialect: Dialect | None = None) -> Recorded:
    """A recorded SSE stream: what its deltas delivered, and the receipt it carried."""
    events = list(sse_events(data))
    if not events:
        raise UnreadableResponse("the stream holds no events")
    chosen = dialect or detect_stream_dialect(events)
    readers: dict[Dialect, Callable[[Events], Recorded]] = {
        "openai-chat": _chat_stream,
        "openai-completions": _completion_stream,
        "openai-responses": _responses_stream,
        "anthropic": _anthropic_stream,
    }
    with reading(f"a recorded {chosen} stream"):
        return readers[chosen](events)


def sse_events(data: bytes | str) -> Iterator[tuple[str | None, str]]:
    """Each event of an SSE stream as (event name or None, data lines joined)."""
    text = decode(data).replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        name: str | None = None
        lines: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                lines.append(value)
        if lines:
            yield name, "\n".join(lines)


def detect_stream_dialect(events: Events) -> Dialect:
    name, data = events[0]
    first = json_object(data) if data != "[DONE]" else {}
    kind = name or first.get("type")
    if kind == "message_start":
        return "anthropic"
    if isinstance(kind, str) and kind.startswith("response."):
        return "openai-responses"
    if first.get("object") == "chat.completion.chunk":
        return "openai-chat"
    if first.get("object") == "text_completion":
        return "openai-completions"
    raise UnreadableResponse("cannot tell which API this stream comes from; pass --dialect")


@dataclass
class _Gathered:
    """What a stream's events delivered so far. `reasoning` stays None until the stream
    shows any (a dialect that always shows it starts it as a list)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] | None = None
    calls: dict[Any, ToolCall] = field(default_factory=dict)
    finish: str | None = None
    receipt: CarriedReceipt | None = None

    def reason(self, piece: Any) -> None:
        self.reasoning = [*(self.reasoning or []), text_of(piece)]

    def call(self, key: Any, *, call_id: Any = None, name: Any = None, arguments: Any = "") -> None:
        """A piece of the call under `key`: the first id and name stick, arguments join."""
        known = self.calls.get(key, ToolCall("", "", ""))
        self.calls[key] = ToolCall(
            id=known.id or text_of(call_id or ""),
            name=known.name or text_of(name or ""),
            arguments=known.arguments + text_of(arguments or ""),
        )

    def recorded(self, *, calls_by_key: bool = False) -> Recorded:
        keys = sorted(self.calls) if calls_by_key else list(self.calls)
        received = Received(
            text="".join(self.text),
            reasoning=None if self.reasoning is None else "".join(self.reasoning),
            tool_calls=tuple(self.calls[key] for key in keys),
            finish_reason=self.finish or "cancelled",
        )
        return Recorded(received, self.receipt)


def _chat_stream(events: Events) -> Recorded:
    gathered = _Gathered(reasoning=[])  # chat shows reasoning whenever there is any
    for chunk in _chunks(events, gathered):
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            gathered.text.append(text_of(delta.get("content") or ""))
            gathered.reason(delta.get("reasoning_content") or "")
            for piece in delta.get("tool_calls") or []:
                function = piece.get("function") or {}
                gathered.call(
                    piece["index"],
                    call_id=piece.get("id"),
                    name=function.get("name"),
                    arguments=function.get("arguments"),
                )
            if choice.get("finish_reason") is not None:
                gathered.finish = neutral_finish(CHAT_FINISH, choice["finish_reason"])
    return gathered.recorded(calls_by_key=True)


def _completion_stream(events: Events) -> Recorded:
    gathered = _Gathered()  # the legacy API never shows reasoning
    for chunk in _chunks(events, gathered):
        for choice in chunk.get("choices") or []:
            gathered.text.append(text_of(choice.get("text") or ""))
            if choice.get("finish_reason") is not None:
                gathered.finish = neutral_finish(CHAT_FINISH, choice["finish_reason"])
    return gathered.recorded()


def _chunks(events: Events, gathered: _Gathered) -> Iterator[dict[str, Any]]:
    """The chunks of an OpenAI chat or legacy stream, noting its receipt and any error."""
    for _name, data in events:
        if data == "[DONE]":
            continue
        chunk = json_object(data)
        if "moonflower_receipt" in chunk:
            gathered.receipt = carried_receipt(chunk["moonflower_receipt"])
        if "error" in chunk:
            gathered.finish = "failed"
        yield chunk


def _anthropic_stream(events: Events) -> Recorded:
    gathered = _Gathered()
    call_ids: dict[int, str] = {}
    for name, data in events:
        event = json_object(data)
        kind = event.get("type") or name
        if kind == "content_block_start":
            block = event["content_block"]
            if block["type"] == "tool_use":
                call_ids[event["index"]] = block["id"]
                gathered.call(block["id"], call_id=block["id"], name=block.get("name"))
            elif block["type"] == "thinking":
                gathered.reason(block.get("thinking") or "")
            elif block["type"] == "text":
                gathered.text.append(text_of(block.get("text") or ""))
        elif kind == "content_block_delta":
            _anthropic_delta(gathered, event["delta"], call_ids.get(event["index"]))
        elif kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason is not None:
                gathered.finish = neutral_finish(ANTHROPIC_FINISH, reason)
        elif kind == "moonflower_receipt":
            gathered.receipt = carried_receipt(event["receipt"])
        elif kind == "error":
            gathered.finish = "failed"
    return gathered.recorded()


def _anthropic_delta(gathered: _Gathered, delta: dict[str, Any], call_id: str | None) -> None:
    if delta["type"] == "text_delta":
        gathered.text.append(text_of(delta["text"]))
    elif delta["type"] == "thinking_delta":
        gathered.reason(delta["thinking"])
    elif delta["type"] == "input_json_delta":
        if call_id is None:
            raise KeyError("input_json_delta outside a tool_use block")
        gathered.call(call_id, arguments=delta["partial_json"])


def _responses_stream(events: Events) -> Recorded:
    gathered = _Gathered()
    for name, data in events:
        if data == "[DONE]":
            continue
        event = json_object(data)
        kind = event.get("type") or name
        if kind == "response.output_item.added":
            item = event["item"]
            if item["type"] == "function_call":
                gathered.call(item["id"], call_id=item.get("call_id"), name=item.get("name"))
            elif item["type"] == "reasoning":
                gathered.reason("")
        elif kind == "response.output_text.delta":
            gathered.text.append(text_of(event["delta"]))
        elif kind == "response.reasoning_text.delta":
            gathered.reason(event["delta"])
        elif kind == "response.function_call_arguments.delta":
            gathered.call(event["item_id"], arguments=event["delta"])
        elif kind == "response.function_call_arguments.done":
            gathered.call(event["item_id"], name=event.get("name"))
        elif kind == "moonflower.receipt":
            gathered.receipt = carried_receipt(event["receipt"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            status = event["response"]["status"]
            gathered.finish = responses_finish(status, has_calls=bool(gathered.calls))
        elif kind == "error":
            gathered.finish = "failed"
    return gathered.recorded()
