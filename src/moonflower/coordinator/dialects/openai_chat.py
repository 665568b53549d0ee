"""OpenAI Chat Completions: parse a request body into a `GenerationRequest`, render events back.

Parsing validates every field the endpoint honours and names the field in errors; unknown
fields are ignored (their names, never their values, are logged at debug level). Rendering
produces `chat.completion` bodies and `chat.completion.chunk` SSE frames. This module does
not dispatch, frame SSE bytes itself, or choose HTTP status codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moonflower import errors
from moonflower.coordinator.dialects import openai_errors
from moonflower.generation import (
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
)

log = logging.getLogger(__name__)

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class _ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None
    name: str | None = None


class _StreamOptions(_Strict):
    include_usage: bool = False


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class ChatCompletionBody(_Strict):
    model: str = Field(min_length=1)
    messages: list[_ChatMessage] = Field(min_length=1)
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = Field(default=None)
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = None
    n: int | None = Field(default=None, ge=1, le=128)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A parsed chat request: the neutral request plus what only this dialect needs."""

    request: GenerationRequest
    is_stream: bool
    include_usage: bool


def parse(payload: Any) -> ChatCall:
    if not isinstance(payload, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.", param=None)
    try:
        body = ChatCompletionBody.model_validate(payload)
    except ValidationError as exc:
        raise openai_errors.from_validation_error(exc) from None
    if body.model_extra:
        log.debug("ignoring unknown chat completion fields: %s", sorted(body.model_extra))
    if body.n not in (None, 1):
        raise errors.InvalidRequest("Only n=1 is supported.", param="n", code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise errors.InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > 4 or any(not s for s in stops):
        raise errors.InvalidRequest(
            "'stop' takes up to 4 non-empty sequences.", param="stop", code="invalid_value"
        )
    request = GenerationRequest(
        model=body.model,
        messages=tuple(_message(m) for m in body.messages),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        sampling=SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        ),
        stop=stops,
    )
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return ChatCall(request=request, is_stream=bool(body.stream), include_usage=include_usage)


def _message(message: _ChatMessage) -> Message:
    content = message.content
    text = "\n".join(part.text for part in content) if isinstance(content, list) else content or ""
    return Message(role=_ROLES[message.role], content=text)
