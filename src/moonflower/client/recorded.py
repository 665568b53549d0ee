"""What a consumer received, read back from a saved whole answer of any dialect, and what
reading a recorded stream (`moonflower.client.recorded_stream`) shares with it.

Owns turning a whole body (OpenAI chat completion, legacy completion, Responses `response`,
Anthropic `message`) into a `Received` — visible text, reasoning, tool calls as (name,
exact arguments text), neutral finish reason — and the receipt object a stream or the
receipts route carries. It must not verify anything, and does no I/O.

Dialect finish reasons map back to neutral ones: chat `stop`/`length`/`tool_calls`;
legacy `stop`/`length`; Anthropic `end_turn`/`stop_sequence` → `stop`, `max_tokens` →
`length`, `tool_use` → `tool_calls`; Responses `completed` → `stop` (or `tool_calls` when
the output has function calls), `incomplete` → `length`, `failed` → `failed`. An unknown
reason is kept as it is, so the finish-reason check names it.

Limits: the legacy API shows no reasoning, and echoes the prompt in front of the text when
asked to (`echo`), which no receipt covers; a whole Anthropic message carries tool-call
arguments only as parsed objects, so they are re-serialised the way the provider writes
them (`json.dumps`, default separators), which matches unless the model wrote them otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from moonflower.client.verify import Received
from moonflower.errors import UnreadableResponse
from moonflower.generation import ToolCall

Dialect = Literal["openai-chat", "openai-completions", "openai-responses", "anthropic"]
DIALECTS: Final[tuple[Dialect, ...]] = (
    "openai-chat",
    "openai-completions",
    "openai-responses",
    "anthropic",
)

CHAT_FINISH: Final = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}
ANTHROPIC_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
RESPONSES_FINISH: Final = {"incomplete": "length", "failed": "failed", "cancelled": "cancelled"}


@dataclass(frozen=True)
class CarriedReceipt:
    """The receipt as a stream carried it, or as `GET /v1/receipts/{job_id}` returned it."""

    job_id: str
    provider_id: str
    receipt: str
    signature: str
    response_hash: str


@dataclass(frozen=True)
class Recorded:
    """A saved answer read back: what was received, and the receipt it carried if any."""

    received: Received
    receipt: CarriedReceipt | None = None


def carried_receipt(payload: Mapping[str, Any]) -> CarriedReceipt:
    """A receipt object (`moonflower_receipt` payload or receipts route body)."""
    try:
        return CarriedReceipt(
            job_id=text_of(payload["job_id"]),
            provider_id=text_of(payload["provider_id"]),
            receipt=text_of(payload["receipt"]),
            signature=text_of(payload["signature"]),
            response_hash=text_of(payload["response_hash"]),
        )
    except (KeyError, TypeError) as exc:
        raise UnreadableResponse(f"the receipt object lacks a field: {exc}") from None


def from_body(body: Any, dialect: Dialect) -> Received:
    """What a whole (non-streaming) body of `dialect` delivered."""
    readers: dict[Dialect, Callable[[Any], Received]] = {
        "openai-chat": from_chat_body,
        "openai-completions": from_completion_body,
        "openai-responses": from_responses_body,
        "anthropic": from_anthropic_body,
    }
    return readers[dialect](body)


def detect_body_dialect(body: Any) -> Dialect:
    kind = body.get("object") if isinstance(body, dict) else None
    found: dict[Any, Dialect] = {
        "chat.completion": "openai-chat",
        "text_completion": "openai-completions",
        "response": "openai-responses",
    }
    if kind in found:
        return found[kind]
    if isinstance(body, dict) and body.get("type") == "message":
        return "anthropic"
    raise UnreadableResponse("cannot tell which API this body comes from; pass --dialect")


def from_chat_body(body: Any) -> Received:
    """An OpenAI `chat.completion` body (its first choice)."""
    with reading("a chat completion"):
        choice = body["choices"][0]
        message = choice["message"]
        calls = tuple(
            ToolCall(
                id=text_of(call.get("id") or ""),
                name=text_of(call["function"]["name"]),
                arguments=text_of(call["function"].get("arguments") or ""),
            )
            for call in message.get("tool_calls") or []
        )
        return Received(
            text=text_of(message.get("content") or ""),
            reasoning=text_of(message.get("reasoning_content") or ""),
            tool_calls=calls,
            finish_reason=neutral_finish(CHAT_FINISH, choice.get("finish_reason")),
        )


def from_completion_body(body: Any) -> Received:
    """A legacy `text_completion` body (its first choice); it never shows reasoning."""
    with reading("a legacy completion"):
        choice = body["choices"][0]
        return Received(
            text=text_of(choice.get("text") or ""),
            reasoning=None,
            tool_calls=(),
            finish_reason=neutral_finish(CHAT_FINISH, choice.get("finish_reason")),
        )


def from_anthropic_body(body: Any) -> Received:
    """An Anthropic `message` body: text blocks, thinking blocks, tool_use blocks."""
    with reading("an Anthropic message"):
        text: list[str] = []
        reasoning: list[str] | None = None
        calls: list[ToolCall] = []
        for block in body["content"]:
            kind = block["type"]
            if kind == "text":
                text.append(text_of(block["text"]))
            elif kind == "thinking":
                reasoning = (reasoning or []) + [text_of(block["thinking"])]
            elif kind == "tool_use":
                arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
                calls.append(ToolCall(text_of(block["id"]), text_of(block["name"]), arguments))
        return Received(
            text="".join(text),
            reasoning=None if reasoning is None else "".join(reasoning),
            tool_calls=tuple(calls),
            finish_reason=neutral_finish(ANTHROPIC_FINISH, body.get("stop_reason")),
            has_exact_arguments=not calls,
        )


def from_responses_body(body: Any) -> Received:
    """An OpenAI Responses `response` object: message, reasoning and function_call items."""
    with reading("a Responses object"):
        text: list[str] = []
        reasoning: list[str] | None = None
        calls: list[ToolCall] = []
        for item in body["output"]:
            kind = item["type"]
            if kind == "message":
                text += [text_of(p["text"]) for p in item["content"] if p["type"] == "output_text"]
            elif kind == "reasoning":
                parts = item.get("content") or []
                reasoning = (reasoning or []) + [
                    text_of(p["text"]) for p in parts if p["type"] == "reasoning_text"
                ]
            elif kind == "function_call":
                calls.append(
                    ToolCall(
                        text_of(item.get("call_id") or ""),
                        text_of(item["name"]),
                        text_of(item["arguments"]),
                    )
                )
        return Received(
            text="".join(text),
            reasoning=None if reasoning is None else "".join(reasoning),
            tool_calls=tuple(calls),
            finish_reason=responses_finish(body.get("status"), has_calls=bool(calls)),
        )


def responses_finish(status: Any, *, has_calls: bool) -> str:
    if status == "completed":
        return "tool_calls" if has_calls else "stop"
    return neutral_finish(RESPONSES_FINISH, status)


def neutral_finish(mapping: Mapping[str, str], reason: Any) -> str:
    """The neutral finish reason; an unknown one is kept as it came (or `unknown`)."""
    if not isinstance(reason, str):
        return "unknown"
    return mapping.get(reason, reason)


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Turns a missing field or a wrong type while reading `what` into `UnreadableResponse`."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UnreadableResponse(f"this is not {what} ({type(exc).__name__}: {exc})") from None


def json_object(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise UnreadableResponse(f"an event's data is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UnreadableResponse("an event's data is not a JSON object")
    return value


def text_of(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableResponse("the answer is not UTF-8 text") from None
