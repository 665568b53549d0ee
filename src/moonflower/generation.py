"""The API-neutral generation request and the events that answer it.

Every HTTP dialect parses its body into a `GenerationRequest` and renders the stream of
`GenerationEvent`s back into its own wire shape; providers and engines only ever see these
types. Nothing here knows about OpenAI, Anthropic, HTTP or WebSockets.

These are plain frozen dataclasses: pydantic validates them where they cross a boundary
(the wire protocol), and inside a process they are passed around as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation, already flattened to text.

    Dialects map their own roles onto these three (OpenAI's `developer` becomes `system`).
    """

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling knobs. `None` means "the engine's default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a provider is asked to do: continue `messages` with model `model`.

    A dialect leaves `max_tokens` as `None` when the caller gave no limit; the coordinator
    fills in its default (bounded by the model's context) before dispatch, so a provider
    always receives a bound and the worst-case cost of a job is known before it starts.
    `prompt` is used instead of `messages` by raw text completion (no chat template).
    """

    model: str
    max_tokens: int | None = None
    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Started:
    """The engine accepted the prompt; sent once before any text."""

    prompt_tokens: int
    kind: Literal["started"] = "started"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class Finished:
    """The terminal event of a successful job. `stop_sequence` is the stop string that ended
    the generation, if one did (it is never part of the text)."""

    reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None
    kind: Literal["finished"] = "finished"


FailureCode = Literal[
    "context_length_exceeded",
    "invalid_request",
    "model_not_loaded",
    "engine_error",
    "provider_gone",
    "timeout",
    "overloaded",
]


@dataclass(frozen=True, slots=True)
class Failed:
    """The terminal event of a job that did not finish. `message` never quotes the prompt."""

    code: FailureCode
    message: str
    param: str | None = None
    kind: Literal["failed"] = "failed"


GenerationEvent = Annotated[Started | TextDelta | Finished | Failed, Field(discriminator="kind")]
TerminalEvent = Finished | Failed
