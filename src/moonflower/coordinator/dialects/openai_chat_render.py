"""Renders one job's output events as OpenAI chat completion objects: a whole
`chat.completion` body, or `chat.completion.chunk` SSE frames ending in one `[DONE]`.

Reasoning goes out as `reasoning_content`, tool calls in OpenAI's `tool_calls` shape (whole
or as indexed deltas), log-probabilities when asked for. A whole message carries
`"annotations": []` as OpenAI's does (nothing here cites the web); stream deltas do not, as
OpenAI's chunk delta defines no such field. It does not dispatch or choose HTTP status codes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from moonflower.coordinator import sse
from moonflower.coordinator.completion import Completion
from moonflower.coordinator.dialects import openai_errors
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
    """Renders one job's events as OpenAI chat completion objects."""

    def __init__(
        self, *, model: str, fingerprint: str, prompt_tokens: int, has_logprobs: bool = False
    ) -> None:
        self.id = "chatcmpl-" + secrets.token_urlsafe(18)
        self.created = int(time.time())
        self.model = model
        self.fingerprint = fingerprint
        self.prompt_tokens = prompt_tokens
        self.has_logprobs = has_logprobs

    def completion(self, done: Completion) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": done.text if done.text or not done.tool_calls else None,
            "refusal": None,
            "annotations": [],
        }
        if done.reasoning:
            message["reasoning_content"] = done.reasoning
        if done.tool_calls:
            message["tool_calls"] = [tool_call(call) for call in done.tool_calls]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": self._logprobs(done.logprobs),
                    "finish_reason": finish_reason(done.finished),
                }
            ],
            "usage": usage(done.finished.usage),
        }

    def chunk(
        self,
        delta: dict[str, Any],
        finish: str | None,
        *,
        with_usage: bool,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> bytes:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": self._logprobs(list(logprobs)) if logprobs else None,
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
        if with_usage:
            body["usage"] = None
        return sse.frame(body)

    def receipt_chunk(self, receipted: Receipted, *, with_usage: bool) -> bytes:
        """The provider's signed receipt, riding on an empty delta just before the finish
        chunk: every client already takes empty deltas, and nothing else changes."""
        chunk = orjson.loads(self.chunk({}, None, with_usage=with_usage)[len(b"data: ") :])
        return sse.frame({**chunk, "moonflower_receipt": receipted.payload()})

    def usage_chunk(self, finished: Finished) -> bytes:
        return sse.frame(
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

    async def stream(
        self, events: AsyncIterator[OutputEvent], *, include_usage: bool
    ) -> AsyncIterator[bytes]:
        yield self.chunk({"role": "assistant", "content": ""}, None, with_usage=include_usage)
        async for event in events:
            if isinstance(event, TextDelta):
                yield self.chunk(
                    {"content": event.text},
                    None,
                    with_usage=include_usage,
                    logprobs=event.logprobs if self.has_logprobs else (),
                )
            elif isinstance(event, ReasoningDelta):
                yield self.chunk({"reasoning_content": event.text}, None, with_usage=include_usage)
            elif isinstance(event, ToolCallDelta):
                yield self.chunk(
                    {"tool_calls": [tool_call_delta(event)]}, None, with_usage=include_usage
                )
            elif isinstance(event, Receipted):
                yield self.receipt_chunk(event, with_usage=include_usage)
            elif isinstance(event, Finished) and event.reason != "cancelled":
                yield self.chunk({}, finish_reason(event), with_usage=include_usage)
                if include_usage:
                    yield self.usage_chunk(event)
            else:
                yield sse.frame(openai_errors.stream_error(event))
        yield sse.DONE

    def _logprobs(self, logprobs: list[TokenLogprob]) -> dict[str, Any] | None:
        if not self.has_logprobs:
            return None
        return {"content": [token_logprob(lp) for lp in logprobs], "refusal": None}


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
