"""Anthropic Messages: parse a `/v1/messages` (or `/count_tokens`) body into a `GenerationRequest`.

Validates every field the endpoint honours and names the field in errors the way Anthropic
does (`messages.0.content.1.type: …`); unknown fields are ignored (their names, never their
values, are logged at debug level). Content is text only: `text`, `tool_use` and
`tool_result` blocks are mapped, `thinking` blocks sent back in history are dropped (as
Anthropic drops them), images, documents and server-tool blocks are refused with a 400.
This module does not dispatch, render responses or choose HTTP status codes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, Tag

from moonflower import errors
from moonflower.coordinator.dialects import anthropic_errors
from moonflower.coordinator.dialects.request_body import (
    MAX_ANTHROPIC_STOPS,
    MAX_MESSAGES,
    ToolMode,
    check_stops,
    resolve_tool_choice,
    type_tag,
    validate_body,
)
from moonflower.coordinator.dialects.schema_bounds import check_schema
from moonflower.generation import (
    GenerationRequest,
    Message,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)

log = logging.getLogger(__name__)

MIN_THINKING_BUDGET = 1024
"""Anthropic's own lower bound for `thinking.budget_tokens`."""

_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,128}$"
_BLOCK_ID = r"^[a-zA-Z0-9_-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _TextBlock(_Strict):
    type: Literal["text"]
    text: str = Field(min_length=1)


class _UnsupportedBlock(_Strict):
    """Any content the network cannot take (images, documents, server-tool results…)."""

    type: str


_ResultPart = Annotated[
    Annotated[_TextBlock, Tag("_text")] | Annotated[_UnsupportedBlock, Tag("_other")],
    type_tag({"text"}, "_other"),
]


class _ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str = Field(pattern=_BLOCK_ID)
    name: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]


class _ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(pattern=_BLOCK_ID)
    content: str | list[_ResultPart] | None = None
    is_error: bool = False


class _ThinkingBlock(_Strict):
    """`thinking` / `redacted_thinking` blocks a client sends back with earlier turns."""

    type: Literal["thinking", "redacted_thinking"]


_Block = Annotated[
    Annotated[_TextBlock, Tag("_text")]
    | Annotated[_ToolUseBlock, Tag("_tool_use")]
    | Annotated[_ToolResultBlock, Tag("_tool_result")]
    | Annotated[_ThinkingBlock, Tag("_thinking")]
    | Annotated[_ThinkingBlock, Tag("_redacted_thinking")]
    | Annotated[_UnsupportedBlock, Tag("_other")],
    type_tag({"text", "tool_use", "tool_result", "thinking", "redacted_thinking"}, "_other"),
]


class _InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(_Strict):
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class _ChoiceAuto(_Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class _ChoiceAny(_Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class _ChoiceTool(_Strict):
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class _ChoiceNone(_Strict):
    type: Literal["none"]


_ToolChoiceParam = Annotated[
    Annotated[_ChoiceAuto, Tag("_auto")]
    | Annotated[_ChoiceAny, Tag("_any")]
    | Annotated[_ChoiceTool, Tag("_tool")]
    | Annotated[_ChoiceNone, Tag("_none")],
    type_tag({"auto", "any", "tool", "none"}, None),
]


class _ThinkingEnabled(_Strict):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=MIN_THINKING_BUDGET)


class _ThinkingAdaptive(_Strict):
    type: Literal["adaptive"]


class _ThinkingDisabled(_Strict):
    type: Literal["disabled"]


_ThinkingParam = Annotated[
    Annotated[_ThinkingEnabled, Tag("_enabled")]
    | Annotated[_ThinkingAdaptive, Tag("_adaptive")]
    | Annotated[_ThinkingDisabled, Tag("_disabled")],
    type_tag({"enabled", "adaptive", "disabled"}, None),
]


class _Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=512)


class CountTokensBody(_Strict):
    """What both endpoints share: the conversation, its tools and the thinking setting."""

    model: str = Field(min_length=1)
    messages: list[_InputMessage] = Field(min_length=1)
    system: str | list[_TextBlock] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoiceParam | None = None
    thinking: _ThinkingParam | None = None


class MessagesBody(CountTokensBody):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: _Metadata | None = None
    stream: bool | None = None


_Body = TypeVar("_Body", bound=CountTokensBody)


@dataclass(frozen=True, slots=True)
class MessagesCall:
    """A parsed Messages request: the neutral request plus what only this dialect needs."""

    request: GenerationRequest
    is_stream: bool
    is_thinking: bool
    """Whether the caller enabled thinking: only then is reasoning rendered as blocks."""


def parse(payload: Any, *, max_messages: int = MAX_MESSAGES) -> MessagesCall:
    """A `/v1/messages` body with at most `max_messages` messages."""
    body = _validate(MessagesBody, payload, max_messages)
    stops = tuple(body.stop_sequences or ())
    check_stops(
        stops,
        name="stop_sequences",
        max_count=MAX_ANTHROPIC_STOPS,
        to_error=anthropic_errors.from_validation_error,
    )
    for i, stop in enumerate(stops):
        if not stop:
            raise errors.InvalidRequest(
                f"stop_sequences.{i}: a stop sequence must not be empty",
                param=f"stop_sequences[{i}]",
            )
    if isinstance(body.thinking, _ThinkingEnabled) and body.thinking.budget_tokens >= (
        body.max_tokens
    ):
        raise errors.InvalidRequest(
            "`max_tokens` must be greater than `thinking.budget_tokens`.", param="max_tokens"
        )
    request = replace(
        _conversation(body),
        max_tokens=body.max_tokens,
        stop=stops,
        sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k),
    )
    return MessagesCall(
        request=request, is_stream=bool(body.stream), is_thinking=_is_thinking(body)
    )


def parse_count(payload: Any, *, max_messages: int = MAX_MESSAGES) -> GenerationRequest:
    """A `/v1/messages/count_tokens` body: the conversation that would be sent, unlimited."""
    body = _validate(CountTokensBody, payload, max_messages)
    return _conversation(body)


def _validate(model: type[_Body], payload: Any, max_messages: int) -> _Body:
    return validate_body(
        model,
        payload,
        to_error=anthropic_errors.from_validation_error,
        endpoint="messages",
        max_messages=max_messages,
    )


def _is_thinking(body: CountTokensBody) -> bool:
    return isinstance(body.thinking, _ThinkingEnabled | _ThinkingAdaptive)


def _conversation(body: CountTokensBody) -> GenerationRequest:
    for i, tool in enumerate(body.tools or ()):
        check_schema(
            tool.input_schema, param=f"tools[{i}].input_schema", prefix=f"tools.{i}.input_schema"
        )
        if tool.input_schema.get("type") != "object":
            raise errors.InvalidRequest(
                f"tools.{i}.input_schema.type: Input should be 'object'",
                param=f"tools[{i}].input_schema.type",
            )
    tools = tuple(
        Tool(name=t.name, description=t.description, parameters=t.input_schema)
        for t in body.tools or ()
    )
    choice = _tool_choice(body.tool_choice, tools)
    if choice.mode in ("required", "function") and _is_thinking(body):
        raise errors.InvalidRequest(
            "Thinking may not be enabled when tool_choice forces tool use.", param="tool_choice"
        )
    messages: list[Message] = []
    system = _system_text(body.system)
    if system:
        messages.append(Message(role="system", content=system))
    names: dict[str, str] = {}
    for i, message in enumerate(body.messages):
        messages.extend(_messages(i, message, names))
    return GenerationRequest(
        model=body.model, messages=tuple(messages), tools=tools, tool_choice=choice
    )


def _system_text(system: str | list[_TextBlock] | None) -> str:
    if isinstance(system, list):
        return "\n".join(block.text for block in system)
    return system or ""


def _tool_choice(choice: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    mode: ToolMode = "auto"
    if isinstance(choice, _ChoiceTool):
        mode = "function"
    elif isinstance(choice, _ChoiceAny):
        mode = "required"
    elif isinstance(choice, _ChoiceNone):
        mode = "none"
    return resolve_tool_choice(
        mode,
        choice.name if isinstance(choice, _ChoiceTool) else None,
        tools,
        missing_tools="tool_choice: a tool must be forced only when `tools` are given.",
        unknown_name="tool_choice.name: no tool named '{name}' is in `tools`.",
        name_param="tool_choice.name",
    )


def _messages(i: int, message: _InputMessage, names: dict[str, str]) -> list[Message]:
    """One Anthropic message as neutral messages: a user turn's `tool_result` blocks become
    `tool` messages (in place), an assistant turn's `tool_use` blocks its `tool_calls`."""
    if isinstance(message.content, str):
        return [Message(role=message.role, content=message.content)]
    out: list[Message] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(message.content):
        where = f"messages.{i}.content.{j}"
        if isinstance(block, _TextBlock):
            texts.append(block.text)
        elif isinstance(block, _ThinkingBlock):
            continue
        elif isinstance(block, _ToolUseBlock) and message.role == "assistant":
            names[block.id] = block.name
            calls.append(ToolCall(block.id, block.name, orjson.dumps(block.input).decode()))
        elif isinstance(block, _ToolResultBlock) and message.role == "user":
            if texts:
                out.append(Message(role="user", content="\n".join(texts)))
                texts = []
            out.append(_tool_result(where, block, names))
        else:
            raise _unsupported(where, block.type, message.role)
    if message.role == "assistant":
        return [Message(role="assistant", content="\n".join(texts), tool_calls=tuple(calls))]
    if texts or not out:
        out.append(Message(role="user", content="\n".join(texts)))
    return out


def _tool_result(where: str, block: _ToolResultBlock, names: dict[str, str]) -> Message:
    parts: list[str] = []
    if isinstance(block.content, str):
        parts.append(block.content)
    for k, part in enumerate(block.content if isinstance(block.content, list) else ()):
        if not isinstance(part, _TextBlock):
            raise _unsupported(f"{where}.content.{k}", part.type, "tool_result")
        parts.append(part.text)
    text = "\n".join(parts)
    # The neutral message has no error flag; the model reads that the call failed.
    content = f"Error: {text}" if block.is_error else text
    return Message(
        role="tool",
        content=content,
        tool_call_id=block.tool_use_id,
        name=names.get(block.tool_use_id),
    )


def _unsupported(where: str, kind: str, container: str) -> errors.InvalidRequest:
    param = re.sub(r"\.(\d+)", r"[\1]", where) + ".type"
    if kind in ("tool_use", "tool_result"):
        reason = f"'{kind}' blocks are not allowed in {container} messages"
    else:
        reason = f"'{kind}' content is not supported on this network; send text"
    return errors.InvalidRequest(f"{where}.type: {reason}.", param=param)
