"""Generated text to tool calls: the output half of the tool-calling convention.

Owns the three ways text becomes `ToolCallDelta`s, as streaming "shapers" that take released
text pieces and return what to send (`str` for text, `ToolCallDelta` for calls):

- `ToolCallScanner` (tool_choice auto): free text in which `<tool_call>{"name": …,
  "arguments": {…}}</tool_call>` blocks become calls. Only a possible `<tool_call>` prefix
  (and the whitespace before it) is held back; a block is held until it closes, and a block
  that does not parse, or names a tool that was not offered, is sent on as the text it was.
  Whitespace that only separates calls from each other or from the edges is dropped.
- `ForcedCallStream` (one forced function): the whole output is the arguments object,
  streamed as it arrives after a first delta carrying the call's id and name.
- `ChoiceCallStream` (a call to one of several tools): the output is `{"name": …,
  "arguments": {…}}`; the arguments stream once the name is known.

Every shaper gives the same result for any chunking of the same text. This module is pure:
it must not know about tokens, models or grammars, and it never logs anything.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from moonflower.generation import ToolCallDelta
from moonflower.prompting.tool_prompt import CLOSE_TAG, OPEN_TAG
from moonflower.provider.engines.stop_text import held_back_length

Shaped = str | ToolCallDelta
"""One piece of shaped output: text to send as text, or a piece of a tool call."""


def new_call_id() -> str:
    """A fresh tool-call id in OpenAI's style (`call_` and 24 hex digits)."""
    return "call_" + secrets.token_hex(12)


class OutputShaper(Protocol):
    """Released text in, text and tool-call pieces out."""

    @property
    def calls(self) -> int:
        """How many tool calls have been started so far."""
        ...

    @property
    def held(self) -> int:
        """How many characters pushed so far have not been accounted for in any output."""
        ...

    def push(self, piece: str) -> list[Shaped]: ...

    def flush(self, *, complete: bool) -> list[Shaped]:
        """The end of the output; `complete` is False when it was cut short (length,
        cancel), so a constrained output may be unfinished."""
        ...


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str


def parse_call(text: str, names: Iterable[str]) -> ParsedCall | None:
    """`{"name": …, "arguments": {…}}` (or `"parameters"`, as some models write) naming one
    of `names`, as a call with its arguments re-serialized; anything else is None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if value["name"] not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


class PlainText:
    """No tools: every piece is text as it is."""

    calls = 0
    held = 0

    def push(self, piece: str) -> list[Shaped]:
        return [piece] if piece else []

    def flush(self, *, complete: bool) -> list[Shaped]:
        return []


class ToolCallScanner:
    """Free text with `<tool_call>` blocks (tool_choice auto)."""

    def __init__(self, names: Iterable[str], new_id: Callable[[], str] = new_call_id) -> None:
        self._names = frozenset(names)
        self._new_id = new_id
        self._pending = ""  # text that may still become part of a block, or block content
        self._in_block = False
        self._space_before = ""  # whitespace between the text and an open block
        self._after_call = False  # whitespace that follows a call is dropped
        self._calls = 0

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def held(self) -> int:
        opened = len(OPEN_TAG) + len(self._space_before) if self._in_block else 0
        return len(self._pending) + opened

    def push(self, piece: str) -> list[Shaped]:
        out: list[Shaped] = []
        buffer = self._pending + piece
        while True:
            if self._in_block:
                end = buffer.find(CLOSE_TAG)
                if end < 0:
                    self._pending = buffer
                    return _merged(out)
                self._close_block(buffer[:end], out, closed=True)
                buffer = buffer[end + len(CLOSE_TAG) :]
                continue
            start = buffer.find(OPEN_TAG)
            if start >= 0:
                before = buffer[:start]
                text = before.rstrip()
                self._text(text, out)
                self._space_before = before[len(text) :]
                self._in_block = True
                buffer = buffer[start + len(OPEN_TAG) :]
                continue
            keep = held_back_length(buffer, (OPEN_TAG,))
            head = buffer[: len(buffer) - keep]
            text = head.rstrip()
            self._text(text, out)
            self._pending = buffer[len(text) :]
            return _merged(out)

    def flush(self, *, complete: bool) -> list[Shaped]:
        out: list[Shaped] = []
        if self._in_block:
            # An unclosed block still counts when its JSON is whole (the model ended its
            # turn instead of writing the closing tag); a cut-off one stays text.
            self._close_block(self._pending, out, closed=False)
        else:
            self._text(self._pending, out)
        self._pending = ""
        return _merged(out)

    def _close_block(self, content: str, out: list[Shaped], *, closed: bool) -> None:
        call = parse_call(content, self._names)
        self._in_block = False
        self._pending = ""
        if call is None:
            tail = CLOSE_TAG if closed else ""
            raw = self._space_before + OPEN_TAG + content + tail
            self._space_before = ""
            self._text(raw, out, keep_space=True)
            return
        self._space_before = ""
        out.append(ToolCallDelta(self._calls, call.arguments, id=self._new_id(), name=call.name))
        self._calls += 1
        self._after_call = True

    def _text(self, text: str, out: list[Shaped], *, keep_space: bool = False) -> None:
        if self._after_call and not keep_space:
            text = text.lstrip()
        if text:
            self._after_call = False
            out.append(text)


class ForcedCallStream:
    """The output is the arguments of a call to `name` (one forced function)."""

    def __init__(self, name: str, new_id: Callable[[], str] = new_call_id) -> None:
        self._name = name
        self._new_id = new_id
        self._started = False

    @property
    def calls(self) -> int:
        return int(self._started)

    held = 0

    def push(self, piece: str) -> list[Shaped]:
        if not piece:
            return []
        out: list[Shaped] = []
        if not self._started:
            self._started = True
            out.append(ToolCallDelta(0, "", id=self._new_id(), name=self._name))
        out.append(ToolCallDelta(0, piece))
        return out

    def flush(self, *, complete: bool) -> list[Shaped]:
        return []


# What a grammar-constrained `{"name": …, "arguments": ` looks like before the arguments.
_CHOICE_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
# The end of the arguments may be followed by the closing brace of the wrapper.
_CHOICE_TAIL = re.compile(r"\s*(?:\}\s*)?\Z")


class ChoiceCallStream:
    """The output is `{"name": <one of names>, "arguments": {…}}` (a forced call to one of
    several tools), generated in that key order."""

    def __init__(self, names: Iterable[str], new_id: Callable[[], str] = new_call_id) -> None:
        self._names = frozenset(names)
        self._new_id = new_id
        self._pending = ""
        self._name: str | None = None
        self._in_arguments = False

    @property
    def calls(self) -> int:
        return int(self._name is not None)

    @property
    def held(self) -> int:
        return len(self._pending)

    def push(self, piece: str) -> list[Shaped]:
        buffer = self._pending + piece
        out: list[Shaped] = []
        if self._name is None:
            head = _CHOICE_HEAD.match(buffer)
            if head is None:
                self._pending = buffer
                return out
            name = json.loads(head.group(1))
            if name not in self._names:
                # Only a grammar that does not match the tools could write this.
                raise ValueError("the constrained output named a tool that was not offered")
            self._name = name
            out.append(ToolCallDelta(0, "", id=self._new_id(), name=name))
            buffer = buffer[head.end() :]
        if not self._in_arguments:
            # Whitespace before the arguments object is the wrapper's, not the arguments'.
            buffer = buffer.lstrip()
            self._in_arguments = bool(buffer)
        tail = _CHOICE_TAIL.search(buffer)
        cut = tail.start() if tail is not None else len(buffer)
        if cut:
            out.append(ToolCallDelta(0, buffer[:cut]))
        self._pending = buffer[cut:]
        return out

    def flush(self, *, complete: bool) -> list[Shaped]:
        rest, self._pending = self._pending, ""
        if self._name is None or complete or not rest:
            # Complete: what is held is the wrapper's closing brace, not arguments.
            return []
        return [ToolCallDelta(0, rest)]


def _merged(out: list[Shaped]) -> list[Shaped]:
    """Adjacent text pieces joined into one."""
    merged: list[Shaped] = []
    for item in out:
        if isinstance(item, str) and merged and isinstance(merged[-1], str):
            merged[-1] += item
        else:
            merged.append(item)
    return merged
