"""Tools and tool turns written into a conversation: the prompt half of the tool convention.

Chat templates that know about tools get them natively (see `chat_format`); for every other
template (SmolLM2's ChatML, Gemma's turns, strict user/assistant alternation) this module
rewrites the conversation into plain system/user/assistant turns any template can take:

- the offered tools and how to call them go into a system section (appended to the first
  system message, or a new one), asking for `<tool_call>{"name": …, "arguments": {…}}
  </tool_call>` blocks, the form `tool_output.ToolCallScanner` reads back;
- an assistant turn's tool calls become those same blocks after its text;
- tool results become a user turn of `<tool_response>` blocks (consecutive results share one
  turn, so templates that insist on alternating roles still accept the conversation).

All of it is the callers' text to the tokenizer (tool names, descriptions, arguments and
results are theirs): the turns it writes are content, never parsed for control tokens.

Pure text mapping: it must not tokenize, know any engine, or log anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from moonflower.generation import GenerationRequest, Message, Tool, ToolCall

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
"""A call is written between these tags; the provider's `tool_output` reads calls back by them."""

TOOLS_INTRODUCTION = (
    "# Tools\n\n"
    "You may call one or more functions to help with the user's request. "
    "The functions you can call are described in JSON inside <tools></tools>:\n"
)
CALLING_CONVENTION = (
    "To call a function, reply with one block per call, with the arguments as a JSON object "
    "that follows the function's parameters schema:\n"
    f'{OPEN_TAG}{{"name": "<function name>", "arguments": {{<arguments>}}}}{CLOSE_TAG}\n'
    "The result of each call comes back to you inside <tool_response></tool_response>."
)


def offered_tools(request: GenerationRequest) -> tuple[Tool, ...]:
    """The tools the model is told about: none when tool_choice is `none`."""
    return () if request.tool_choice.mode == "none" else request.tools


def tool_description(tool: Tool) -> dict[str, Any]:
    """A tool as the JSON object shown to the model (OpenAI's `function` object)."""
    described: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        described["description"] = tool.description
    described["parameters"] = tool.parameters
    return described


def tools_section(tools: Sequence[Tool]) -> str:
    """The system-prompt section describing `tools` and the calling convention."""
    listed = "\n".join(json.dumps(tool_description(t), ensure_ascii=False) for t in tools)
    return f"{TOOLS_INTRODUCTION}<tools>\n{listed}\n</tools>\n\n{CALLING_CONVENTION}"


def call_arguments(call: ToolCall) -> Any:
    """A call's arguments as a JSON value when they parse (templates and this convention show
    them as an object), else the text as it was sent."""
    try:
        return json.loads(call.arguments)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return call.arguments


def call_block(call: ToolCall) -> str:
    body = {"name": call.name, "arguments": call_arguments(call)}
    return f"{OPEN_TAG}{json.dumps(body, ensure_ascii=False)}{CLOSE_TAG}"


def response_block(message: Message) -> str:
    name = f" name={json.dumps(message.name, ensure_ascii=False)}" if message.name else ""
    return f"<tool_response{name}>\n{message.content}\n</tool_response>"


def as_plain_turns(messages: Sequence[Message], tools: Sequence[Tool]) -> list[Message]:
    """`messages` with tools described in the system prompt and tool turns written as text,
    using only the roles system, user and assistant."""
    turns: list[Message] = []
    for message in messages:
        if message.role == "tool":
            block = response_block(message)
            previous = turns[-1] if turns else None
            if previous is not None and previous.role == "user" and previous.name == "tool":
                turns[-1] = Message("user", f"{previous.content}\n{block}", name="tool")
            else:
                # `name="tool"` marks the turn as results only, so the next result joins it.
                turns.append(Message("user", block, name="tool"))
        elif message.role == "assistant" and message.tool_calls:
            parts = [message.content] if message.content else []
            parts.extend(call_block(call) for call in message.tool_calls)
            turns.append(Message("assistant", "\n".join(parts)))
        else:
            turns.append(Message(message.role, message.content))
    if tools:
        turns = _with_tools_section(turns, tools_section(tools))
    return turns


def _with_tools_section(turns: list[Message], section: str) -> list[Message]:
    if turns and turns[0].role == "system":
        first = turns[0].content
        joined = f"{first}\n\n{section}" if first else section
        return [Message("system", joined), *turns[1:]]
    return [Message("system", section), *turns]
