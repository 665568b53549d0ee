"""Renders one job's output events as OpenAI chat completion objects: the
`chat.completion.chunk` objects of a stream (the SSE layer ends it with `[DONE]`), and the
whole `chat.completion`, which is those chunks folded (`ChatFold`).

Reasoning goes out as `reasoning_content`, tool calls in OpenAI's `tool_calls` shape (whole
or as indexed deltas), log-probabilities when asked for. A whole message carries
`"annotations": []` as OpenAI's does (nothing here cites the web); stream deltas do not, as
OpenAI's chunk delta defines no such field. It does not dispatch or choose HTTP status codes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from moonflower.coordinator import sse
from moonflower.coordinator.dialects import openai_errors
from moonflower.coordinator.dialects.openai_chunk_fold import RECEIPT_FIELD, ChunkFold
from moonflower.generation import (
    Finished,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)


class ChatRenderer:
    """Renders one job's events as `chat.completion.chunk` objects; `fold` gathers them into
    the whole `chat.completion`. With `include_usage` the stream ends with a usage chunk
    (a whole answer always asks for it: its `usage` comes from there)."""

    def __init__(
        self,
        *,
        model: str,
        fingerprint: str,
        has_logprobs: bool = False,
        include_usage: bool = False,
    ) -> None:
        self.id = "chatcmpl-" + secrets.token_urlsafe(18)
        self.created = int(time.time())
        self.model = model
        self.fingerprint = fingerprint
        self.has_logprobs = has_logprobs
        self.include_usage = include_usage

    def fold(self) -> ChatFold:
        return ChatFold(has_logprobs=self.has_logprobs)

    def chunk(
        self,
        delta: dict[str, Any],
        finish: str | None,
        *,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> sse.Event:
        return sse.Event(self._chunk_body(delta, finish, logprobs))

    def _chunk_body(
        self, delta: dict[str, Any], finish: str | None, logprobs: tuple[TokenLogprob, ...] = ()
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": logprobs_object([token_logprob(lp) for lp in logprobs])
            if logprobs
            else None,
            "finish_reason": finish,
        }
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [choice],
        }
        if self.include_usage:
            body["usage"] = None
        return body

    def receipt_chunk(self, receipted: Receipted) -> sse.Event:
        """The provider's signed receipt, riding on an empty delta just before the finish
        chunk: every client already takes empty deltas, and nothing else changes."""
        body = self._chunk_body({}, None)
        body[RECEIPT_FIELD] = receipted.payload()
        return sse.Event(body)

    def usage_chunk(self, finished: Finished) -> sse.Event:
        return sse.Event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": self.fingerprint,
                "choices": [],
                "usage": usage(finished.usage),
            }
        )

    async def stream(self, events: AsyncIterator[OutputEvent]) -> AsyncGenerator[sse.Event, None]:
        yield self.chunk({"role": "assistant", "content": ""}, None)
        async for event in events:
            if isinstance(event, TextDelta):
                yield self.chunk(
                    {"content": event.text},
                    None,
                    logprobs=event.logprobs if self.has_logprobs else (),
                )
            elif isinstance(event, ReasoningDelta):
                yield self.chunk({"reasoning_content": event.text}, None)
            elif isinstance(event, ToolCallDelta):
                yield self.chunk({"tool_calls": [tool_call_delta(event)]}, None)
            elif isinstance(event, Receipted):
                yield self.receipt_chunk(event)
            elif isinstance(event, Finished) and event.reason != "cancelled":
                yield self.chunk({}, finish_reason(event))
                if self.include_usage:
                    yield self.usage_chunk(event)
            else:
                yield sse.Event(openai_errors.stream_error(event))


@dataclass
class _CallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChatFold(ChunkFold):
    """Gathers `chat.completion.chunk` objects into one `chat.completion`, as OpenAI's SDKs
    accumulate a stream: content, reasoning and log-probabilities concatenated, tool-call
    pieces joined by index, the finish reason and usage from the chunks that carry them.
    Receipt chunks are skipped: a whole answer carries its receipt in headers."""

    def __init__(self, *, has_logprobs: bool) -> None:
        super().__init__()
        self.has_logprobs = has_logprobs
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.calls: dict[int, _CallParts] = {}

    def _add_choice(self, choice: dict[str, Any]) -> None:
        self._add_delta(choice["delta"])
        if choice["logprobs"] is not None:
            self.logprobs.extend(choice["logprobs"]["content"])

    def _add_delta(self, delta: dict[str, Any]) -> None:
        if content := delta.get("content"):
            self.content.append(content)
        if reasoning := delta.get("reasoning_content"):
            self.reasoning.append(reasoning)
        for piece in delta.get("tool_calls", ()):
            parts = self.calls.setdefault(piece["index"], _CallParts())
            parts.id = piece.get("id") or parts.id
            parts.name = piece["function"].get("name") or parts.name
            parts.arguments.append(piece["function"]["arguments"])

    def result(self) -> dict[str, Any]:
        text = "".join(self.content)
        calls = [
            tool_call(ToolCall(id=p.id, name=p.name, arguments="".join(p.arguments)))
            for _index, p in sorted(self.calls.items())
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
            "annotations": [],
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if calls:
            message["tool_calls"] = calls
        logprobs = logprobs_object(self.logprobs) if self.has_logprobs else None
        return self._whole(
            "chat.completion", {"index": 0, "message": message, "logprobs": logprobs}
        )


def logprobs_object(content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": content, "refusal": None}


def token_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token.encode()),
        "top_logprobs": [
            {"token": token, "logprob": value, "bytes": list(token.encode())}
            for token, value in lp.top
        ],
    }


def tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": delta.arguments}
    piece: dict[str, Any] = {"index": delta.index, "function": function}
    if delta.id is not None:
        piece["id"] = delta.id
        piece["type"] = "function"
    if delta.name is not None:
        function["name"] = delta.name
    return piece


def finish_reason(finished: Finished) -> str:
    return {"length": "length", "tool_calls": "tool_calls"}.get(finished.reason, "stop")


def usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
