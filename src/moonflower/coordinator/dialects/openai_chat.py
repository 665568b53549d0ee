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

from pydantic import BaseModel, ConfigDict, Field, Tag

from moonflower import errors
from moonflower.coordinator.dialects import openai_errors
from moonflower.coordinator.dialects.request_body import (
    MAX_MESSAGES,
    MAX_OPENAI_STOPS,
    ToolMode,
    check_stops,
    resolve_tool_choice,
    type_tag,
    unreadable_content,
    validate_body,
)
from moonflower.coordinator.dialects.schema_bounds import check_schema
from moonflower.generation import (
    GenerationRequest,
    Message,
    ResponseFormat,
    Role,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)

log = logging.getLogger(__name__)

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class _UnreadablePart(_Strict):
    """A part the models here cannot read (an image, audio, a file…): refused by name."""

    type: str = Field(max_length=64)


_ContentPart = Annotated[
    Annotated[_TextPart, Tag("_text")] | Annotated[_UnreadablePart, Tag("_other")],
    type_tag({"text"}, "_other"),
]


class _FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str


class _ToolCall(_Strict):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: _FunctionCall


class _ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_ContentPart] | None = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None


class _StreamOptions(_Strict):
    include_usage: bool = False


class _FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _Tool(_Strict):
    type: Literal["function"]
    function: _FunctionDefinition


class _NamedFunction(_Strict):
    name: str


class _NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _NamedFunction


class _JsonSchemaFormat(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class _ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchemaFormat | None = None


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
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: _ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A parsed chat request: the neutral request plus what only this dialect needs."""

    request: GenerationRequest
    is_stream: bool
    include_usage: bool


def parse(payload: Any, *, max_messages: int = MAX_MESSAGES) -> ChatCall:
    """A chat completion body with at most `max_messages` messages."""
    body = validate_body(
        ChatCompletionBody,
        payload,
        to_error=openai_errors.from_validation_error,
        endpoint="chat completion",
        max_messages=max_messages,
    )
    _check_combinations(body)
    stops = openai_stops(body.stop)
    tools = tuple(_tool(t, i) for i, t in enumerate(body.tools or ()))
    request = GenerationRequest(
        model=body.model,
        messages=tuple(_message(m, i) for i, m in enumerate(body.messages)),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        sampling=SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        ),
        stop=stops,
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        response_format=_response_format(body.response_format),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return ChatCall(request=request, is_stream=bool(body.stream), include_usage=include_usage)


def _check_combinations(body: ChatCompletionBody) -> None:
    if body.n not in (None, 1):
        raise errors.InvalidRequest("Only n=1 is supported.", param="n", code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise errors.InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise errors.InvalidRequest(
            "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
        )


def openai_stops(stop: str | list[str] | None) -> tuple[str, ...]:
    """`stop` (one string or a list, chat and legacy completions alike) as a tuple: at most
    4 sequences (OpenAI's documented limit), none empty or over `MAX_STOP_CHARS`."""
    if stop == "":
        raise errors.InvalidRequest(
            "Invalid 'stop': a stop sequence must not be empty.", param="stop", code="invalid_value"
        )
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    check_stops(
        stops,
        name="stop",
        max_count=MAX_OPENAI_STOPS,
        to_error=openai_errors.from_validation_error,
        is_list=not isinstance(stop, str),
    )
    return stops


def _text(content: str | list[_TextPart | _UnreadablePart] | None, param: str) -> str:
    if not isinstance(content, list):
        return content or ""
    for k, part in enumerate(content):
        if isinstance(part, _UnreadablePart):
            raise unreadable_content(part.type, f"{param}.content[{k}].type", text_type="text")
    return "\n".join(part.text for part in content if isinstance(part, _TextPart))


def _message(message: _ChatMessage, index: int) -> Message:
    param = f"messages[{index}]"
    text = _text(message.content, param)
    if message.role == "tool" and not message.tool_call_id:
        raise errors.InvalidRequest(
            f"Missing required parameter: '{param}.tool_call_id'.",
            param=f"{param}.tool_call_id",
            code="missing_required_parameter",
        )
    if message.tool_calls and message.role != "assistant":
        raise errors.InvalidRequest(
            "Only assistant messages can carry tool_calls.", param=f"{param}.tool_calls"
        )
    calls = tuple(
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in message.tool_calls or ()
    )
    return Message(
        role=_ROLES[message.role],
        content=text,
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def _tool(tool: _Tool, index: int) -> Tool:
    if tool.function.parameters is not None:
        where = f"tools[{index}].function.parameters"
        check_schema(tool.function.parameters, param=where, prefix=f"Invalid '{where}'")
    parameters = tool.function.parameters or {"type": "object", "properties": {}}
    return Tool(
        name=tool.function.name, description=tool.function.description, parameters=parameters
    )


def _tool_choice(
    choice: Literal["none", "auto", "required"] | _NamedToolChoice | None, tools: tuple[Tool, ...]
) -> ToolChoice:
    named = choice.function.name if isinstance(choice, _NamedToolChoice) else None
    mode: ToolMode = "function" if isinstance(choice, _NamedToolChoice) else choice or "auto"
    return resolve_tool_choice(
        mode,
        named,
        tools,
        missing_tools="'tool_choice' requires 'tools' to be given.",
        unknown_name="'tool_choice' names a function that is not in 'tools': {name}.",
        name_param="tool_choice",
    )


def _response_format(requested: _ResponseFormat | None) -> ResponseFormat | None:
    if requested is None or requested.type == "text":
        return None
    if requested.type == "json_object":
        return ResponseFormat("json_object")
    spec = requested.json_schema
    if spec is None:
        raise errors.InvalidRequest(
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    if spec.schema_ is not None:
        where = "response_format.json_schema.schema"
        check_schema(spec.schema_, param=where, prefix=f"Invalid '{where}'")
    return ResponseFormat("json_schema", schema=spec.schema_ or {}, name=spec.name)
