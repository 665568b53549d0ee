"""The API-neutral generation request and the events that answer it.

Every HTTP dialect parses its body into a `GenerationRequest` and renders the stream of
`GenerationEvent`s back into its own wire shape; providers and engines only ever see these
types. Nothing here knows about OpenAI, Anthropic, HTTP or WebSockets.

These are plain frozen dataclasses: pydantic validates them where they cross a boundary
(the wire protocol), and inside a process they are passed around as they are. The bounds in
their annotations (`TokenCount`, `Label`, …) only apply there: a provider's event that breaks
one is a protocol error, while constructing a dataclass in-process checks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

MAX_TOKEN_COUNT = 1 << 24
"""The largest token count any event may state (16,777,216): above any context window, and
far below 2**31, so no count can overflow a 32-bit column or an addition of a few of them."""
MAX_TEXT_CHARS = 1 << 20
"""The longest text one event may carry (a text delta, a piece of tool-call arguments)."""
MAX_LABEL_CHARS = 256
"""The longest name or identifier (tool names and call ids, error params, token strings)."""
MAX_FAILURE_MESSAGE_CHARS = 1024
"""A provider's failure message is cut to this length (see `ReadableMessage`)."""
MAX_LOGPROBS_PER_EVENT = 4096
MAX_TOP_LOGPROBS = 20
MAX_TOOL_CALL_INDEX = (1 << 16) - 1

PRINTABLE_PATTERN = r"^(?:[^\p{C}\p{Z}]| )*$"
"""Printable text: no control, format, private-use, unassigned or separator characters other
than the plain space (so no newline, escape or bidirectional override can reach a log line).
The same characters as `str.isprintable()`."""

TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKEN_COUNT)]
EventText = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
TokenText = Annotated[str, Field(max_length=MAX_LABEL_CHARS)]
"""A token as text: any characters (a token may be a newline), bounded."""
Logprob = Annotated[float, Field(le=0.0, allow_inf_nan=False)]
Label = Annotated[str, Field(max_length=MAX_LABEL_CHARS, pattern=PRINTABLE_PATTERN)]
"""A printable name or identifier; anything else is refused."""


def _readable(text: str) -> str:
    """`text` made printable and cut to `MAX_FAILURE_MESSAGE_CHARS` characters."""
    if len(text) > MAX_FAILURE_MESSAGE_CHARS:
        text = text[: MAX_FAILURE_MESSAGE_CHARS - 1] + "…"
    if not text.isprintable():
        text = "".join(char if char.isprintable() else " " for char in text)
    return text


ReadableMessage = Annotated[str, AfterValidator(_readable)]
"""Free text meant for people (a failure message): sanitised rather than refused, because an
honest engine's message may quote names the consumer chose."""

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
    """Sampling knobs. `None` means "the model's recommended value, else the engine's
    default" (temperature 1, top_p 1, top_k off, no penalties, a random seed)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def filled_from(self, defaults: SamplingParams) -> SamplingParams:
        """These knobs, with `defaults`' value wherever one is unset here."""
        unset = {
            knob.name: getattr(defaults, knob.name)
            for knob in fields(self)
            if getattr(self, knob.name) is None
        }
        return replace(self, **unset)


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
    prompt_tokens: TokenCount
    completion_tokens: TokenCount

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Started:
    """The engine accepted the prompt; sent once before any text."""

    prompt_tokens: TokenCount
    starts_in_reasoning: bool = False
    """True when the prompt itself opened a `<think>` block (some chat templates do), so
    the output begins as reasoning until `</think>`."""
    kind: Literal["started"] = "started"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: TokenText
    logprob: Logprob
    top: Annotated[tuple[tuple[TokenText, Logprob], ...], Field(max_length=MAX_TOP_LOGPROBS)] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: EventText
    logprobs: Annotated[tuple[TokenLogprob, ...], Field(max_length=MAX_LOGPROBS_PER_EVENT)] = ()
    tokens: TokenCount = 0
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

    index: Annotated[int, Field(ge=0, le=MAX_TOOL_CALL_INDEX)]
    arguments: EventText = ""
    id: Label | None = None
    name: Label | None = None
    tokens: TokenCount = 0
    """As `TextDelta.tokens`."""
    kind: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class Finished:
    """The terminal event of a successful job. `stop_sequence` is the stop string that ended
    the generation, if one did (it is never part of the text)."""

    reason: FinishReason
    usage: Usage
    stop_sequence: EventText | None = None
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
    message: ReadableMessage
    param: Label | None = None
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
