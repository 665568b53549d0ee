"""The whole answers of OpenAI's dialects as `/openapi.json` publishes them: what each fold
produces (`ChatFold`, `CompletionFold`, `ResponseFold`) — a `chat.completion`, a
`text_completion`, a `response` — described as typed dicts.

Descriptions only, used for the published schemas: every field the fold always sends is
required, a field it may leave out is `NotRequired`, and no other field is allowed, so a
test validating real answers against the published schema notices any drift. Nothing here
builds or checks an answer at run time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

_CLOSED = ConfigDict(extra="forbid")
_Nothing = Annotated[list[Any], Field(max_length=0)]
"""A list that is always empty (citations, summaries: nothing here makes them)."""
_One = Field(min_length=1, max_length=1)


# Chat completions (`POST /v1/chat/completions`).


@with_config(_CLOSED)
class TopLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int]


@with_config(_CLOSED)
class TokenLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


@with_config(_CLOSED)
class ChoiceLogprobs(TypedDict):
    content: list[TokenLogprob]
    refusal: None


@with_config(_CLOSED)
class FunctionCall(TypedDict):
    name: str
    arguments: str


@with_config(_CLOSED)
class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


@with_config(_CLOSED)
class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    annotations: _Nothing
    reasoning_content: NotRequired[str]
    tool_calls: NotRequired[list[ToolCall]]


@with_config(_CLOSED)
class ChatChoice(TypedDict):
    index: Literal[0]
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"]


@with_config(_CLOSED)
class PromptTokensDetails(TypedDict):
    cached_tokens: int
    audio_tokens: int


@with_config(_CLOSED)
class CompletionTokensDetails(TypedDict):
    reasoning_tokens: int
    audio_tokens: int
    accepted_prediction_tokens: int
    rejected_prediction_tokens: int


@with_config(_CLOSED)
class ChatUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


@with_config(_CLOSED)
class ChatCompletion(TypedDict):
    """A whole `chat.completion`: the stream's chunks folded."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: Annotated[list[ChatChoice], _One]
    usage: ChatUsage


# Legacy completions (`POST /v1/completions`).


@with_config(_CLOSED)
class LegacyLogprobs(TypedDict):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


@with_config(_CLOSED)
class TextChoice(TypedDict):
    text: str
    index: Literal[0]
    logprobs: LegacyLogprobs | None
    finish_reason: Literal["stop", "length"]


@with_config(_CLOSED)
class TextUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@with_config(_CLOSED)
class TextCompletion(TypedDict):
    """A whole `text_completion`: the stream's chunks folded."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: Annotated[list[TextChoice], _One]
    usage: TextUsage


# Responses (`POST /v1/responses`).

ItemStatus = Literal["completed", "incomplete"]


@with_config(_CLOSED)
class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: _Nothing
    logprobs: list[TokenLogprob]


@with_config(_CLOSED)
class ReasoningText(TypedDict):
    type: Literal["reasoning_text"]
    text: str


@with_config(_CLOSED)
class MessageItem(TypedDict):
    type: Literal["message"]
    id: str
    status: ItemStatus
    role: Literal["assistant"]
    content: Annotated[list[OutputText], _One]


@with_config(_CLOSED)
class ReasoningItem(TypedDict):
    type: Literal["reasoning"]
    id: str
    summary: _Nothing
    content: Annotated[list[ReasoningText], _One]
    status: ItemStatus


@with_config(_CLOSED)
class FunctionCallItem(TypedDict):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = Annotated[MessageItem | ReasoningItem | FunctionCallItem, Field(discriminator="type")]


@with_config(_CLOSED)
class InputTokensDetails(TypedDict):
    cached_tokens: int


@with_config(_CLOSED)
class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


@with_config(_CLOSED)
class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


@with_config(_CLOSED)
class IncompleteDetails(TypedDict):
    reason: Literal["max_output_tokens"]


@with_config(_CLOSED)
class ReasoningSettings(TypedDict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None
    summary: Literal["auto", "concise", "detailed"] | None


@with_config(_CLOSED)
class TextFormat(TypedDict):
    type: Literal["text", "json_object", "json_schema"]
    name: NotRequired[str]
    schema: NotRequired[dict[str, Any]]
    description: NotRequired[str]
    strict: NotRequired[bool]


@with_config(_CLOSED)
class TextSettings(TypedDict):
    format: TextFormat
    verbosity: NotRequired[Literal["low", "medium", "high"]]


@with_config(_CLOSED)
class FunctionTool(TypedDict):
    type: Literal["function"]
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


@with_config(_CLOSED)
class NamedToolChoice(TypedDict):
    type: Literal["function"]
    name: str


@with_config(_CLOSED)
class Response(TypedDict):
    """A whole `response`: the one the stream's `response.completed` or
    `response.incomplete` event carries. Sampling values are those the job ran with; the
    request-only settings are echoed as given."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete"]
    completed_at: int | None
    background: Literal[False]
    error: None
    incomplete_details: IncompleteDetails | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    model: str
    output: Annotated[list[OutputItem], Field(min_length=1)]
    output_text: str
    previous_response_id: None
    service_tier: Literal["default"]
    store: Literal[False]
    truncation: Literal["disabled"]
    usage: ResponseUsage
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    instructions: str | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    prompt_cache_key: str | None
    reasoning: ReasoningSettings
    safety_identifier: str | None
    text: TextSettings
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice
    tools: list[FunctionTool]
    top_logprobs: int
    user: str | None
