"""OpenAI Responses API: parse a `POST /v1/responses` body into a `GenerationRequest`.

Owns what the endpoint accepts: `input` as a string or an item list (messages,
`function_call` and `function_call_output` items; `reasoning` items are context the model
does not need and are skipped), or — as the reference accepts — chat-style `messages`
instead; `instructions`, sampling (temperature, top_p, presence and frequency penalties,
as chat completions takes them), `max_output_tokens`, function `tools`, `tool_choice`,
`text.format`, and the logprobs of the output text (`include` with
`message.output_text.logprobs`, `top_logprobs`). Errors name the field (`input[2].type`);
unknown fields are ignored (their names, never their values, are logged at debug level).
Nothing is stored, so fields that refer to stored state are refused. The body's shape, as
pydantic validates it, is `openai_responses_body`.

It also returns the request-only settings in the shape a `response` object repeats them
(`ResponsesCall.echo`): `instructions`, `tools`, `safety_identifier`, `prompt_cache_key`, ….
The sampling values a response reports are the ones its job ran with, which the renderer
is given, not the request's. It does not render responses, dispatch, or choose status codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from moonflower import errors
from moonflower.coordinator.dialects import openai_chat, openai_errors
from moonflower.coordinator.dialects.openai_responses_body import (
    ResponsesBody,
    _FunctionCallItem,
    _FunctionCallOutputItem,
    _FunctionTool,
    _MessageItem,
    _Reasoning,
    _Text,
    _TextFormat,
    _TextPart,
    _ToolChoiceFunction,
    _UnreadablePart,
)
from moonflower.coordinator.dialects.request_body import (
    MAX_MESSAGES,
    ToolMode,
    resolve_tool_choice,
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
}
_Item = _MessageItem | _FunctionCallItem | _FunctionCallOutputItem
_ITEM_MODELS: dict[str, type[_Item]] = {
    "message": _MessageItem,
    "function_call": _FunctionCallItem,
    "function_call_output": _FunctionCallOutputItem,
}
_SKIPPED_ITEMS = {"reasoning"}
OUTPUT_LOGPROBS = "message.output_text.logprobs"
"""The `include` value asking for the log-probabilities of the output text."""


@dataclass(frozen=True, slots=True)
class ResponsesCall:
    """A parsed Responses request: the neutral request plus what only this dialect needs.

    `echo` holds the request's settings exactly as a `response` object repeats them
    (`instructions`, `tools`, `tool_choice`, `text`, …): a JSON-ready wire fragment. It
    holds no sampling values: a response reports those its job ran with.
    """

    request: GenerationRequest
    is_stream: bool
    echo: dict[str, Any]


def parse(payload: Any, *, max_messages: int = MAX_MESSAGES) -> ResponsesCall:
    """A Responses body with at most `max_messages` input items (or messages)."""
    body = validate_body(
        ResponsesBody,
        payload,
        to_error=openai_errors.from_validation_error,
        endpoint="responses",
        max_messages=max_messages,
    )
    _refuse_stored_state(body)
    tools = tuple(_tool(raw, i) for i, raw in enumerate(body.tools or ()))
    neutral_tools = tuple(tool for tool, _spec in tools)
    text_format = body.text.format if body.text is not None else None
    instructions = (Message("system", body.instructions),) if body.instructions else ()
    request = GenerationRequest(
        model=body.model,
        messages=instructions + _conversation(body, max_messages),
        max_tokens=body.max_output_tokens,
        sampling=SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        ),
        tools=neutral_tools,
        tool_choice=_tool_choice(body.tool_choice, neutral_tools),
        response_format=_response_format(text_format),
        logprobs=(body.top_logprobs or 0) if OUTPUT_LOGPROBS in (body.include or ()) else None,
    )
    echo: dict[str, Any] = {
        "instructions": body.instructions,
        "max_tool_calls": body.max_tool_calls,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": _reasoning_echo(body.reasoning),
        "safety_identifier": body.safety_identifier,
        "text": _text_echo(body.text),
        "tool_choice": _tool_choice_echo(body.tool_choice),
        "tools": [spec for _tool, spec in tools],
        "top_logprobs": body.top_logprobs or 0,
        "user": body.user,
    }
    return ResponsesCall(request=request, is_stream=bool(body.stream), echo=echo)


def _reasoning_echo(reasoning: _Reasoning | None) -> dict[str, Any]:
    """What OpenAI reports for a model that takes no reasoning settings too: both null."""
    if reasoning is None:
        return {"effort": None, "summary": None}
    return {"effort": reasoning.effort, "summary": reasoning.summary}


def _text_echo(text: _Text | None) -> dict[str, Any]:
    echo: dict[str, Any] = {"format": _format_echo(text.format if text is not None else None)}
    if text is not None and text.verbosity is not None:
        echo["verbosity"] = text.verbosity
    return echo


def _refuse_stored_state(body: ResponsesBody) -> None:
    stored = {
        "previous_response_id": body.previous_response_id is not None,
        "conversation": body.conversation is not None,
        "background": bool(body.background),
    }
    for param, is_given in stored.items():
        if is_given:
            raise errors.InvalidRequest(
                f"'{param}' is not supported: this network stores no responses or "
                "conversations; send the whole conversation in 'input' instead.",
                param=param,
                code="unsupported_parameter",
            )


def _conversation(body: ResponsesBody, max_messages: int) -> tuple[Message, ...]:
    if body.input is not None and body.messages:
        raise errors.InvalidRequest(
            "Give the conversation either as 'input' or as 'messages', not both.",
            param="messages",
        )
    if body.messages is not None and body.input is None:
        # A chat-style body sent here: the chat dialect knows that shape.
        chat = openai_chat.parse(
            {"model": body.model, "messages": body.messages}, max_messages=max_messages
        )
        return chat.request.messages
    if body.input is None:
        raise errors.InvalidRequest(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    if isinstance(body.input, str):
        return (Message("user", body.input),)
    messages: list[Message] = []
    call_names: dict[str, str] = {}
    for index, raw in enumerate(body.input):
        item = _item(raw, index)
        if isinstance(item, _MessageItem):
            content = _text(item.content, f"input[{index}].content")
            messages.append(Message(_ROLES[item.role], content))
        elif isinstance(item, _FunctionCallItem):
            call_names[item.call_id] = item.name
            _add_call(messages, ToolCall(item.call_id, item.name, item.arguments))
        elif isinstance(item, _FunctionCallOutputItem):
            name = call_names.get(item.call_id)
            output = _text(item.output, f"input[{index}].output")
            messages.append(Message("tool", output, (), item.call_id, name))
    if not messages:
        raise errors.InvalidRequest(
            "'input' must contain at least one message or function call item.",
            param="input",
            code="invalid_value",
        )
    return tuple(messages)


def _item(raw: Any, index: int) -> _Item | None:
    where = f"input[{index}]"
    if not isinstance(raw, dict):
        raise errors.InvalidRequest(
            f"Invalid type for '{where}': expected an input item object.",
            param=where,
            code="invalid_type",
        )
    kind = raw.get("type", "message")
    if kind in _SKIPPED_ITEMS:
        return None
    model = _ITEM_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise errors.InvalidRequest(
            f"Invalid value for '{where}.type': unsupported input item type; supported "
            "types are message, function_call, function_call_output and reasoning.",
            param=f"{where}.type",
            code="invalid_value",
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _nested(exc, where) from None


def _add_call(messages: list[Message], call: ToolCall) -> None:
    """Consecutive calls (and the assistant text right before them) are one assistant turn."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = Message("assistant", last.content, (*last.tool_calls, call))
    else:
        messages.append(Message("assistant", "", (call,)))


def _text(content: str | list[_TextPart | _UnreadablePart], where: str) -> str:
    if isinstance(content, str):
        return content
    for k, part in enumerate(content):
        if isinstance(part, _UnreadablePart):
            raise unreadable_content(part.type, f"{where}[{k}].type", text_type="input_text")
    return "\n".join(part.text for part in content if isinstance(part, _TextPart))


def _tool(raw: Any, index: int) -> tuple[Tool, dict[str, Any]]:
    where = f"tools[{index}]"
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind != "function":
        raise errors.InvalidRequest(
            f"Invalid value for '{where}.type': only function tools are supported.",
            param=f"{where}.type",
            code="invalid_value",
        )
    try:
        spec = _FunctionTool.model_validate(raw)
    except ValidationError as exc:
        raise _nested(exc, where) from None
    if spec.parameters is not None:
        check_schema(
            spec.parameters, param=f"{where}.parameters", prefix=f"Invalid '{where}.parameters'"
        )
    parameters = spec.parameters or {"type": "object", "properties": {}}
    tool = Tool(name=spec.name, description=spec.description, parameters=parameters)
    echo = {
        "type": "function",
        "name": spec.name,
        "description": spec.description,
        "parameters": spec.parameters,
        "strict": spec.strict,
    }
    return tool, echo


def _tool_choice(
    choice: Literal["none", "auto", "required"] | _ToolChoiceFunction | None,
    tools: tuple[Tool, ...],
) -> ToolChoice:
    named = choice.name if isinstance(choice, _ToolChoiceFunction) else None
    mode: ToolMode = "function" if isinstance(choice, _ToolChoiceFunction) else choice or "auto"
    return resolve_tool_choice(
        mode,
        named,
        tools,
        missing_tools="'tool_choice' requires 'tools' to be given.",
        unknown_name="Invalid value for 'tool_choice.name': no function named {name!r} in 'tools'.",
        name_param="tool_choice.name",
    )


def _tool_choice_echo(choice: str | _ToolChoiceFunction | None) -> str | dict[str, str]:
    if isinstance(choice, _ToolChoiceFunction):
        return {"type": "function", "name": choice.name}
    return choice or "auto"


def _response_format(spec: _TextFormat | None) -> ResponseFormat | None:
    if spec is None or spec.type == "text":
        return None
    if spec.type == "json_object":
        return ResponseFormat("json_object")
    for field, value in (("name", spec.name), ("schema", spec.schema_)):
        if value is None:
            raise errors.InvalidRequest(
                f"Missing required parameter: 'text.format.{field}'.",
                param=f"text.format.{field}",
                code="missing_required_parameter",
            )
    check_schema(spec.schema_, param="text.format.schema", prefix="Invalid 'text.format.schema'")
    return ResponseFormat("json_schema", schema=spec.schema_, name=spec.name)


def _format_echo(spec: _TextFormat | None) -> dict[str, Any]:
    if spec is None or spec.type != "json_schema":
        return {"type": spec.type if spec is not None else "text"}
    echo: dict[str, Any] = {"type": "json_schema", "name": spec.name, "schema": spec.schema_}
    if spec.description is not None:
        echo["description"] = spec.description
    echo["strict"] = bool(spec.strict)  # unset means not strict, as OpenAI documents
    return echo


def _nested(exc: ValidationError, where: str) -> errors.InvalidRequest:
    """A validation error inside one list element, with the element's path in front."""
    inner = openai_errors.from_validation_error(exc)
    param = f"{where}.{inner.param}" if inner.param else where
    message = inner.message.replace(f"'{inner.param}'", f"'{param}'", 1)
    return errors.InvalidRequest(message, param=param, code=inner.code)
