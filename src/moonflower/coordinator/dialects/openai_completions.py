"""OpenAI legacy Completions (`POST /v1/completions`): parse a body into a call.

Parsing turns one raw text prompt into a `GenerationRequest` with `prompt` set (no chat
template) and no messages, validating every field the endpoint honours and naming the
field in errors; what cannot be honoured (several prompts, token-id prompts, `n`/`best_of`
above 1, `suffix`, `echo` together with `logprobs`) is refused with a 400 naming it.
Unknown fields are ignored; their names, never their values, are logged at debug level.

Rendering is `openai_completions_render`'s. This module does not dispatch, render, or
choose HTTP status codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from moonflower import errors
from moonflower.coordinator.dialects import openai_errors
from moonflower.coordinator.dialects.openai_chat import openai_stops
from moonflower.coordinator.dialects.request_body import validate_body
from moonflower.generation import GenerationRequest, SamplingParams

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
