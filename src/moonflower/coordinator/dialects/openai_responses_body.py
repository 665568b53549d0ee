"""OpenAI Responses API: the wire models of a `POST /v1/responses` body, as pydantic
validates it — the body's fields with their bounds, input items and their content parts,
function tools, `tool_choice`, `text.format` and `reasoning`.

Strict (no coercion between types); unknown fields are allowed and ignored. What the values
mean, rules across fields and errors that name a list element belong to the parser
(`openai_responses`); nothing here turns a body into a request.

The models other than `ResponsesBody` keep a leading `_` although the parser imports them:
pydantic puts a model's class name into union error paths and some messages, and the error
mapping (`openai_errors.field_path`) drops `_` names, so a client reads `tool_choice.type`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Tag

from moonflower.coordinator.dialects.openai_chat import Penalty
from moonflower.coordinator.dialects.request_body import type_tag

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _TextPart(_Strict):
    type: Literal["input_text", "output_text"]
    text: str


class _UnreadablePart(_Strict):
    """A part the models here cannot read (an image, a file, audio…): refused by name."""

    type: str = Field(max_length=64)


_ContentPart = Annotated[
    Annotated[_TextPart, Tag("_input_text")]
    | Annotated[_TextPart, Tag("_output_text")]
    | Annotated[_UnreadablePart, Tag("_other")],
    type_tag({"input_text", "output_text"}, "_other"),
]


class _MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_ContentPart]


class _FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class _FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[_ContentPart]


_IDENTIFIER_CHARS = 64
"""OpenAI's limit for `safety_identifier` and `prompt_cache_key`."""


class _FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolChoiceFunction(_Strict):
    type: Literal["function"]
    name: str


class _TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class _Text(_Strict):
    format: _TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class _Reasoning(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesBody(_Strict):
    model: str = Field(min_length=1)
    input: str | list[Any] | None = None
    messages: list[Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | _ToolChoiceFunction | None = None
    text: _Text | None = None
    stream: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=_IDENTIFIER_CHARS)
    prompt_cache_key: str | None = Field(default=None, max_length=_IDENTIFIER_CHARS)
    max_tool_calls: int | None = Field(default=None, ge=0)
    parallel_tool_calls: bool | None = None
    reasoning: _Reasoning | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
