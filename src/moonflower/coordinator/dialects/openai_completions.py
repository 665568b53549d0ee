"""OpenAI legacy Completions (`POST /v1/completions`): parse a body, render events back.

Parsing turns one raw text prompt into a `GenerationRequest` with `prompt` set (no chat
template) and no messages, validating every field the endpoint honours and naming the
field in errors; what cannot be honoured (several prompts, token-id prompts, `n`/`best_of`
above 1, `suffix`, `echo` together with `logprobs`) is refused with a 400 naming it.
Unknown fields are ignored; their names, never their values, are logged at debug level.

Rendering produces `text_completion` objects, whole or as SSE chunks ending in one
`[DONE]`, with OpenAI's legacy `logprobs` object (`tokens`, `token_logprobs`,
`top_logprobs`, `text_offset`) when asked for. The legacy API has no reasoning field, so
reasoning deltas are not shown. This module does not dispatch, frame SSE bytes itself, or
choose HTTP status codes.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.completion import Completion
from moonflower.coordinator.dialects import openai_errors
from moonflower.coordinator.dialects.openai_chat import openai_stops
from moonflower.coordinator.dialects.request_body import validate_body
from moonflower.generation import (
    Finished,
    GenerationRequest,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

log = logging.getLogger(__name__)

MAX_LOGPROBS = 5
"""OpenAI's limit for the legacy endpoint's `logprobs` (alternatives per token)."""

_Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _StreamOptions(_Strict):
    include_usage: bool = False


class CompletionBody(_Strict):
    model: str = Field(min_length=1)
    prompt: Any
    """Checked by `_prompt`: its unsupported shapes deserve a clearer message than a union's."""
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = None
    seed: int | None = None
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    best_of: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None


@dataclass(frozen=True, slots=True)
class CompletionCall:
    """A parsed completions request: the neutral request plus what only this dialect needs."""

    request: GenerationRequest
    prompt: str
    is_stream: bool
    include_usage: bool
    is_echo: bool


def parse(payload: Any) -> CompletionCall:
    body = validate_body(
        CompletionBody, payload, to_error=openai_errors.from_validation_error, endpoint="completion"
    )
    prompt = _prompt(body.prompt)
    _check_unsupported(body)
    _check_combinations(body)
    stops = openai_stops(body.stop)
    request = GenerationRequest(
        model=body.model,
        prompt=prompt,
        max_tokens=body.max_tokens,
        sampling=SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        ),
        stop=stops,
        logprobs=body.logprobs,
    )
    return CompletionCall(
        request=request,
        prompt=prompt,
        is_stream=bool(body.stream),
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
        is_echo=bool(body.echo),
    )


def _prompt(value: Any) -> str:
    """One text prompt. `null` means "start a new document", i.e. the empty prompt."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise errors.InvalidRequest(
        "'prompt' must be one string (or a list holding exactly one string); "
        "several prompts and token-id prompts are not supported.",
        param="prompt",
        code="unsupported_value",
    )


def _check_unsupported(body: CompletionBody) -> None:
    for name, value in (("n", body.n), ("best_of", body.best_of)):
        if value not in (None, 1):
            raise _unsupported(name, f"Only {name}=1 is supported.")
    if body.suffix:
        raise _unsupported("suffix", "'suffix' (text insertion) is not supported.")
    if body.echo and body.logprobs is not None:
        raise _unsupported(
            "echo", "'echo' cannot be combined with 'logprobs': prompt logprobs are not computed."
        )


def _unsupported(param: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param, code="unsupported_value")


def _check_combinations(body: CompletionBody) -> None:
    if body.stream_options is not None and not body.stream:
        raise errors.InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
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
    """Renders one job's events as `text_completion` objects."""

    def __init__(self, call: CompletionCall, *, fingerprint: str) -> None:
        self.id = "cmpl-" + secrets.token_urlsafe(18)
        self.created = int(time.time())
        self.model = call.request.model
        self.fingerprint = fingerprint
        self.echoed = call.prompt if call.is_echo else ""
        self.has_logprobs = call.request.logprobs is not None
        self._logprobs = LegacyLogprobs(start_offset=len(call.prompt))

    def completion(self, done: Completion) -> dict[str, Any]:
        choice = self._choice(self.echoed + done.text, done.logprobs, finish_reason(done.finished))
        return {**self._envelope([choice]), "usage": usage(done.finished.usage)}

    async def stream(
        self, events: AsyncIterator[OutputEvent], *, include_usage: bool
    ) -> AsyncIterator[bytes]:
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        if self.echoed:
            yield self._chunk(self.echoed, (), None, extra)
        async for event in events:
            if isinstance(event, TextDelta):
                if event.text or event.logprobs:
                    yield self._chunk(event.text, event.logprobs, None, extra)
            elif isinstance(event, ReasoningDelta | ToolCallDelta):
                continue  # the legacy API has no place for reasoning, and offers no tools
            elif isinstance(event, Receipted):
                # The provider's signed receipt, on an empty chunk before the finish.
                chunk = {**self._envelope([self._choice("", (), None)]), **extra}
                yield sse.frame({**chunk, "moonflower_receipt": event.payload()})
            elif isinstance(event, Finished) and event.reason != "cancelled":
                yield self._chunk("", (), finish_reason(event), extra)
                if include_usage:
                    yield sse.frame({**self._envelope([]), "usage": usage(event.usage)})
            else:
                yield sse.frame(openai_errors.stream_error(event))
        yield sse.DONE

    def _chunk(
        self,
        text: str,
        logprobs: Sequence[TokenLogprob],
        finish: str | None,
        extra: dict[str, Any],
    ) -> bytes:
        return sse.frame({**self._envelope([self._choice(text, logprobs, finish)]), **extra})

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


def finish_reason(finished: Finished) -> str:
    return "length" if finished.reason == "length" else "stop"


def usage(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
