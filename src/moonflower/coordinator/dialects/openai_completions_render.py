"""Renders one job's output events as OpenAI legacy `text_completion` objects: the chunks of
a stream (the SSE layer ends it with `[DONE]`), and the whole body, which is those chunks
folded (`CompletionFold`).

Log-probabilities, when asked for, are OpenAI's legacy `logprobs` object (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`). The legacy API has no reasoning field and
offers no tools, so reasoning and tool-call deltas are not shown. It does not dispatch or
choose HTTP status codes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from moonflower.coordinator import sse
from moonflower.coordinator.dialects import openai_errors
from moonflower.coordinator.dialects.openai_chunk_fold import RECEIPT_FIELD, ChunkFold
from moonflower.coordinator.dialects.openai_completions import CompletionCall
from moonflower.generation import (
    Finished,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)


class LegacyLogprobs:
    """Builds OpenAI's legacy `logprobs` objects; `text_offset` counts characters from the
    start of the prompt, so it carries on from one streamed chunk to the next."""

    def __init__(self, start_offset: int) -> None:
        self._offset = start_offset

    def render(self, tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
        offsets = []
        for token in tokens:
            offsets.append(self._offset)
            self._offset += len(token.token)
        return {
            "tokens": [token.token for token in tokens],
            "token_logprobs": [token.logprob for token in tokens],
            "top_logprobs": [dict(token.top) for token in tokens],
            "text_offset": offsets,
        }


class CompletionRenderer:
    """Renders one job's events as `text_completion` chunks. With `include_usage` the stream
    ends with a usage chunk (a whole answer always asks for it: its `usage` comes from
    there)."""

    def __init__(
        self, call: CompletionCall, *, fingerprint: str, include_usage: bool = False
    ) -> None:
        self.id = "cmpl-" + secrets.token_urlsafe(18)
        self.created = int(time.time())
        self.model = call.request.model
        self.fingerprint = fingerprint
        self.echoed = call.prompt if call.is_echo else ""
        self.has_logprobs = call.request.logprobs is not None
        self.include_usage = include_usage
        self._logprobs = LegacyLogprobs(start_offset=len(call.prompt))

    def fold(self) -> CompletionFold:
        return CompletionFold()

    async def stream(self, events: AsyncIterator[OutputEvent]) -> AsyncGenerator[sse.Event, None]:
        if self.echoed:
            yield self._chunk(self.echoed, (), None)
        async for event in events:
            if isinstance(event, TextDelta):
                if event.text or event.logprobs:
                    yield self._chunk(event.text, event.logprobs, None)
            elif isinstance(event, ReasoningDelta | ToolCallDelta):
                continue  # the legacy API has no place for reasoning, and offers no tools
            elif isinstance(event, Receipted):
                # The provider's signed receipt, on an empty chunk before the finish.
                chunk = self._chunk("", (), None).data
                chunk[RECEIPT_FIELD] = event.payload()
                yield sse.Event(chunk)
            elif isinstance(event, Finished) and event.reason != "cancelled":
                yield self._chunk("", (), finish_reason(event))
                if self.include_usage:
                    yield sse.Event({**self._envelope([]), "usage": usage(event.usage)})
            else:
                yield sse.Event(openai_errors.stream_error(event))

    def _chunk(self, text: str, logprobs: Sequence[TokenLogprob], finish: str | None) -> sse.Event:
        chunk = self._envelope([self._choice(text, logprobs, finish)])
        if self.include_usage:
            chunk["usage"] = None
        return sse.Event(chunk)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }

    def _choice(
        self, text: str, logprobs: Sequence[TokenLogprob], finish: str | None
    ) -> dict[str, Any]:
        return {
            "text": text,
            "index": 0,
            "logprobs": self._logprobs.render(logprobs) if self.has_logprobs else None,
            "finish_reason": finish,
        }


class CompletionFold(ChunkFold):
    """Gathers `text_completion` chunks into the whole `text_completion`: the texts and the
    legacy log-probability lists concatenated, the finish reason and usage from the chunks
    that carry them. Receipt chunks are skipped: a whole answer carries its receipt in
    headers."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.logprobs: dict[str, list[Any]] | None = None

    def _add_choice(self, choice: dict[str, Any]) -> None:
        self.text.append(choice["text"])
        if choice["logprobs"] is not None:
            gathered = self.logprobs or {key: [] for key in choice["logprobs"]}
            for key, values in choice["logprobs"].items():
                gathered[key].extend(values)
            self.logprobs = gathered

    def result(self) -> dict[str, Any]:
        choice = {"text": "".join(self.text), "index": 0, "logprobs": self.logprobs}
        return self._whole("text_completion", choice)


def finish_reason(finished: Finished) -> str:
    return "length" if finished.reason == "length" else "stop"


def usage(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
