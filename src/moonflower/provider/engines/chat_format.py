"""Turning a conversation into the prompt text the model was trained on.

Owns the rendering of a GGUF's own chat template (`tokenizer.chat_template`, a Jinja
template rendered the way llama.cpp and Hugging Face transformers render it: sandboxed,
`trim_blocks`/`lstrip_blocks`, `loopcontrols`, a non-escaping `tojson`, `raise_exception`,
`strftime_now`) and the built-in Gemma turn format for Gemma GGUFs that ship without one.
A template that uses `tools` gets tools and tool turns in OpenAI's shape (as transformers
passes them); every other format gets them written as text by `tool_prompt`.

Must not tokenize, load models, or know any engine: it maps messages to text, nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn, Protocol

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from moonflower.errors import ChatTemplateMissing, ChatTemplateRejected
from moonflower.generation import Message, Tool
from moonflower.provider.engines.tool_prompt import as_plain_turns, call_arguments, tool_description

GEMMA_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3", "gemma3n"})
REASONING_OPEN_TAG = "<think>"


class ChatFormat(Protocol):
    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        """The prompt text for `messages` (with `tools` offered), ending where the
        assistant's reply begins."""
        ...


def opens_reasoning(prompt: str) -> bool:
    """Whether a rendered prompt leaves the reply inside a `<think>` block (templates of
    reasoning models that always think open it themselves)."""
    return prompt.rstrip().endswith(REASONING_OPEN_TAG)


def chat_format_for(metadata: Mapping[str, str], *, bos_token: str, eos_token: str) -> ChatFormat:
    """Choose how to render chats for a model, from its GGUF metadata.

    Its own template wins; a Gemma model without one gets Gemma's turn format; anything else
    can only serve raw completions.
    """
    template = metadata.get("tokenizer.chat_template")
    if template:
        try:
            return JinjaChatFormat(template, bos_token=bos_token, eos_token=eos_token)
        except jinja2.TemplateSyntaxError:
            return NoChatFormat("its chat template is not valid Jinja")
    if metadata.get("general.architecture") in GEMMA_ARCHITECTURES:
        return GemmaTurnFormat()
    return NoChatFormat("it has no chat template in its metadata")


def strip_leading_bos(prompt: str, bos_token: str) -> str:
    """Drop a BOS the template wrote itself when the tokenizer is about to add one anyway,
    as llama.cpp does, so the prompt never starts with two."""
    if bos_token and prompt.startswith(bos_token):
        return prompt[len(bos_token) :]
    return prompt


class _TemplateRaised(Exception):
    """`raise_exception(...)` was called from inside a template."""


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Accept transformers' `{% generation %}…{% endgeneration %}` and render its body."""

    tags = {"generation"}  # noqa: RUF012  (the attribute jinja2 reads)

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class JinjaChatFormat:
    """The model's own Jinja chat template, compiled once at load."""

    def __init__(self, template: str, *, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        self._template = environment.from_string(template)
        self._bos_token = bos_token
        self._eos_token = eos_token
        variables = jinja2.meta.find_undeclared_variables(environment.parse(template))
        self.supports_tools = "tools" in variables

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        if self.supports_tools:
            shaped = [_template_message(m) for m in messages]
            offered = [{"type": "function", "function": tool_description(t)} for t in tools]
        else:
            plain = as_plain_turns(messages, tools)
            shaped = [{"role": m.role, "content": m.content} for m in plain]
            offered = []
        try:
            return self._template.render(
                messages=shaped,
                tools=offered or None,
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                raise_exception=_raise_exception,
                strftime_now=_strftime_now,
            )
        except _TemplateRaised as exc:
            raise ChatTemplateRejected(str(exc)) from None
        except Exception as exc:
            # A template is a program: it can fail in any way, and the error text can quote
            # values (message content), so only the failure's type is reported.
            raise ChatTemplateRejected(type(exc).__name__) from None


def _template_message(message: Message) -> dict[str, Any]:
    """A message as tool-aware templates expect it: OpenAI's shape, with each call's
    arguments as an object, as transformers' chat templates are written for."""
    shaped: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        shaped["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call_arguments(call)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        shaped["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        shaped["name"] = message.name
    return shaped


class GemmaTurnFormat:
    """Gemma's turn format, as its official template writes it.

    Gemma has no system role: leading system messages become a prefix of the first turn
    (separated by a blank line), and later ones are sent as user turns. Assistant turns are
    `model` turns. The BOS token is left to the tokenizer.
    """

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        messages = as_plain_turns(messages, tools)
        index = 0
        system_parts: list[str] = []
        while index < len(messages) and messages[index].role == "system":
            system_parts.append(messages[index].content)
            index += 1
        prefix = "".join(part + "\n\n" for part in system_parts)
        turns = list(messages[index:])
        if not turns and system_parts:
            turns, prefix = [Message(role="user", content="\n\n".join(system_parts))], ""
        parts: list[str] = []
        for position, message in enumerate(turns):
            role = "model" if message.role == "assistant" else "user"
            lead = prefix if position == 0 else ""
            parts.append(f"<start_of_turn>{role}\n{lead}{message.content.strip()}<end_of_turn>\n")
        parts.append("<start_of_turn>model\n")
        return "".join(parts)


class NoChatFormat:
    """A model that cannot render chats; every chat request is refused with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        raise ChatTemplateMissing(self.reason)
