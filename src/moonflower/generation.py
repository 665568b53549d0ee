"""The API-neutral generation request and the events that answer it.

Every HTTP dialect parses its body into a `GenerationRequest` and renders the stream of
`GenerationEvent`s back into its own wire shape; providers and engines only ever see these
types. Nothing here knows about OpenAI, Anthropic, HTTP or WebSockets.

These are plain frozen dataclasses: pydantic validates them where they cross a boundary
(the wire protocol), and inside a process they are passed around as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the assistant made: `arguments` is JSON text (an object)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation, flattened to text.

    Dialects map their own roles onto these four (OpenAI's `developer` becomes `system`).
    An assistant turn may carry `tool_calls`; a `tool` turn is the result of the call named
    by `tool_call_id` (its function's name in `name`).
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is a JSON Schema for its arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """`auto`: the model decides; `none`: never call; `required`: call one of the tools;
    `function`: call the tool named `name`. Forced calls are grammar-constrained."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """`json_object`: any JSON object; `json_schema`: JSON valid against `schema`.
    Both are enforced by constrained generation, not by asking nicely."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None


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
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    response_format: ResponseFormat | None = None
    logprobs: int | None = None
    """When set, each text delta carries the chosen tokens' log-probabilities and up to this
    many alternatives per token (0 = only the chosen token's)."""


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
    starts_in_reasoning: bool = False
    """True when the prompt itself opened a `<think>` block (some chat templates do), so
    the output begins as reasoning until `</think>`."""
    kind: Literal["started"] = "started"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    tokens: int = 0
    """Completion tokens this delta delivers (those sampled since the previous delta): what
    a consumer is charged for when a job breaks off before it finishes."""
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Text the model produced inside `<think>…</think>`: split off by the coordinator."""

    text: str
    kind: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call number `index`. The first piece of each call carries `id` and
    `name`; `arguments` pieces concatenate to the call's JSON arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None
    tokens: int = 0
    """As `TextDelta.tokens`."""
    kind: Literal["tool_call"] = "tool_call"


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


GenerationEvent = Annotated[
    Started | TextDelta | ReasoningDelta | ToolCallDelta | Finished | Failed,
    Field(discriminator="kind"),
]


@dataclass(frozen=True, slots=True)
class Receipted:
    """The provider's verified receipt for the job, placed by the coordinator just before
    the terminal event of a stream (never sent by a provider, never on the wire)."""

    job_id: str
    provider_id: str
    receipt: str
    signature: str
    response_hash: str
    cost_usd: str | None = None
    """What the consumer was charged for the job, when it was settled before the stream
    ended (decimal dollars, six places)."""
    kind: Literal["receipt"] = "receipt"

    def payload(self) -> dict[str, str]:
        fields = {
            "job_id": self.job_id,
            "provider_id": self.provider_id,
            "receipt": self.receipt,
            "signature": self.signature,
            "response_hash": self.response_hash,
        }
        if self.cost_usd is not None:
            fields["cost_usd"] = self.cost_usd
        return fields


GeneratedEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finished | Failed
"""What an engine produces after `Started`."""
OutputEvent = GeneratedEvent | Receipted
"""What a dialect renders: the generated events, and the coordinator's receipt event."""
TerminalEvent = Finished | Failed
