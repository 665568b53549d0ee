"""Turning a conversation into the prompt text the model was trained on.

Owns the rendering of a GGUF's own chat template (`tokenizer.chat_template`, a Jinja
template rendered the way llama.cpp and Hugging Face transformers render it: sandboxed,
`trim_blocks`/`lstrip_blocks`, `loopcontrols`, a non-escaping `tojson`, `raise_exception`,
`strftime_now`) and the built-in Gemma turn format for Gemma GGUFs that ship without one.
A template that uses `tools` gets tools and tool turns in OpenAI's shape (as transformers
passes them); every other format gets them written as text by `tool_prompt`.

Every format renders a chat two ways: `render` gives the prompt text, `segments` the same
text cut into the template's markup and the callers' text (`content_slots` does that for
Jinja templates), so that what callers wrote is never tokenized as control tokens.

Must not tokenize, load models, or know any engine: it maps messages to text, nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn, Protocol

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
from jinja2.sandbox import ImmutableSandboxedEnvironment

from moonflower.errors import ChatTemplateMissing, ChatTemplateRejected
from moonflower.generation import Message, Tool
from moonflower.prompting.content_slots import ContentSlots
from moonflower.prompting.segments import Prompt, Segment, content, markup
from moonflower.prompting.tool_prompt import as_plain_turns, call_arguments, tool_description

GEMMA_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3", "gemma3n"})
REASONING_OPEN_TAG = "<think>"
_SLOTS_VARIABLE = "__moonflower_content_slots"
"""The render variable that holds the `ContentSlots` of a marked rendering."""


class ChatFormat(Protocol):
    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        """The prompt text for `messages` (with `tools` offered), ending where the
        assistant's reply begins."""
        ...

    def segments(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> Prompt:
        """The same text as `render`, cut into the format's markup and the callers' text."""
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


@jinja2.pass_context
def _tojson_filter(context: jinja2.runtime.Context, value: Any, *args: Any, **kwargs: Any) -> str:
    """`tojson`; in a marked rendering, a marker for the JSON: what a template serializes is
    callers' data (tools, arguments), never markup."""
    slots = context.get(_SLOTS_VARIABLE)
    if isinstance(slots, ContentSlots):
        return slots.mark_json(value, lambda unmarked: _tojson(unmarked, *args, **kwargs))
    return _tojson(value, *args, **kwargs)


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
        environment.filters["tojson"] = _tojson_filter
        self._template = environment.from_string(template)
        self._bos_token = bos_token
        self._eos_token = eos_token
        variables = jinja2.meta.find_undeclared_variables(environment.parse(template))
        self.supports_tools = "tools" in variables

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        return self._render(messages, tools, None)

    def segments(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> Prompt:
        real = self._render(messages, tools, None)
        slots = ContentSlots()
        return slots.align(self._render(messages, tools, slots), real)

    def _render(
        self, messages: Sequence[Message], tools: Sequence[Tool], slots: ContentSlots | None
    ) -> str:
        """The template's output; with `slots`, every caller string is a marker."""
        mark = slots.mark if slots is not None else _as_is
        if self.supports_tools:
            shaped = [_template_message(m, mark) for m in messages]
            offered = [
                {"type": "function", "function": _marked_tool(tool_description(t), mark)}
                for t in tools
            ]
        else:
            plain = as_plain_turns(messages, tools)
            shaped = [{"role": m.role, "content": mark(m.content)} for m in plain]
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
                **{_SLOTS_VARIABLE: slots},
            )
        except _TemplateRaised as exc:
            raise ChatTemplateRejected(str(exc)) from None
        except Exception as exc:
            # A template is a program: it can fail in any way, and the error text can quote
            # values (message content), so only the failure's type is reported.
            raise ChatTemplateRejected(type(exc).__name__) from None


def _as_is(text: str) -> str:
    return text


def _template_message(message: Message, mark: Callable[[str], str]) -> dict[str, Any]:
    """A message as tool-aware templates expect it: OpenAI's shape, with each call's
    arguments as an object, as transformers' chat templates are written for. Every string
    a caller wrote goes through `mark`; arguments that parse are objects, which templates
    write with `tojson` (itself marked)."""
    shaped: dict[str, Any] = {"role": message.role, "content": mark(message.content)}
    if message.tool_calls:
        shaped["tool_calls"] = [
            {
                "id": mark(call.id),
                "type": "function",
                "function": {
                    "name": mark(call.name),
                    "arguments": _marked(call_arguments(call), mark),
                },
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        shaped["tool_call_id"] = mark(message.tool_call_id)
    if message.name is not None:
        shaped["name"] = mark(message.name)
    return shaped


def _marked_tool(description: dict[str, Any], mark: Callable[[str], str]) -> dict[str, Any]:
    """A tool's name and description marked. Its parameters schema is left as it is:
    templates look inside it by key, and write it with `tojson`."""
    marked = dict(description, name=mark(description["name"]))
    if "description" in marked:
        marked["description"] = mark(marked["description"])
    return marked


def _marked(value: Any, mark: Callable[[str], str]) -> Any:
    return mark(value) if isinstance(value, str) else value


class GemmaTurnFormat:
    """Gemma's turn format, as its official template writes it.

    Gemma has no system role: leading system messages become a prefix of the first turn
    (separated by a blank line), and later ones are sent as user turns. Assistant turns are
    `model` turns. The BOS token is left to the tokenizer.
    """

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        return self.segments(messages, tools).text

    def segments(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> Prompt:
        messages = as_plain_turns(messages, tools)
        index = 0
        system_parts: list[str] = []
        while index < len(messages) and messages[index].role == "system":
            system_parts.append(messages[index].content)
            index += 1
        prefix = [piece for part in system_parts for piece in (content(part), markup("\n\n"))]
        turns = list(messages[index:])
        if not turns and system_parts:
            turns, prefix = [Message(role="user", content="\n\n".join(system_parts))], []
        parts: list[Segment] = []
        for position, message in enumerate(turns):
            role = "model" if message.role == "assistant" else "user"
            parts.append(markup(f"<start_of_turn>{role}\n"))
            if position == 0:
                parts += prefix
            parts += [content(message.content.strip()), markup("<end_of_turn>\n")]
        parts.append(markup("<start_of_turn>model\n"))
        return Prompt.of(parts)


class NoChatFormat:
    """A model that cannot render chats; every chat request is refused with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
        raise ChatTemplateMissing(self.reason)

    def segments(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> Prompt:
        raise ChatTemplateMissing(self.reason)
