"""Telling a Jinja chat template's own markup apart from the callers' text in its output.

A template is a program that interleaves its markup with the values it is given, and its
output is one string. To know which characters came from callers, the chat is rendered twice:
once with the real values (the prompt exactly as before), and once with every caller string
replaced by a marker — a 64-bit random number between two private-use characters, which no
caller can guess — and every `tojson` output (tools, arguments) replaced by a marker for that
JSON. The marked output splits into the template's markup and slots; aligning it with the
real output recovers the text of each slot, as given or with its surrounding whitespace
trimmed (templates often `trim` content). A template that rewrote a caller's text any other
way, or branched on it, cannot be aligned, and the conversation is refused: caller text is
never read as markup.

Must not tokenize, know any model, or put caller text in an error.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from moonflower.errors import ChatTemplateRejected
from moonflower.prompting.segments import Prompt, Segment, content, markup

_OPEN = "\U000f7a4d"
_CLOSE = "\U000f7a4e"


class ContentSlots:
    """The markers handed to one marked rendering, and the caller text each stands for."""

    def __init__(self) -> None:
        nonce = secrets.randbits(64)
        self._prefix = f"{_OPEN}{nonce}-"
        self._pattern = re.compile(f"{re.escape(self._prefix)}(\\d+){re.escape(_CLOSE)}")
        self._texts: list[str] = []

    def mark(self, text: str) -> str:
        """A marker for `text`. Empty text stays empty, so templates that test whether a
        value is empty take the same branch in both renderings."""
        if not text:
            return text
        self._texts.append(text)
        return f"{self._prefix}{len(self._texts) - 1}{_CLOSE}"

    def mark_json(self, value: Any, dump: Callable[[Any], str]) -> str:
        """A marker for `dump(value)` as the real rendering writes it: markers inside
        `value` (marked message fields) are put back first."""
        return self.mark(dump(self._unmarked(value)))

    def align(self, marked: str, real: str) -> Prompt:
        """`real` cut into the template's markup and the callers' text, using `marked`."""
        pieces = self._pattern.split(marked)
        # split() alternates markup and slot numbers: [markup, slot, markup, slot, …, markup]
        first = pieces[0]
        if not real.startswith(first):
            raise _unaligned()
        segments: list[Segment] = [markup(first)]
        position = len(first)
        for slot, after in zip(pieces[1::2], pieces[2::2], strict=True):
            found = self._slot_text(int(slot), real, position, after)
            segments += [content(found), markup(after)]
            position += len(found) + len(after)
        if position != len(real):
            raise _unaligned()
        return Prompt.of(segments)

    def _slot_text(self, slot: int, real: str, position: int, after: str) -> str:
        for candidate in _renderings(self._texts[slot]):
            if real.startswith(candidate, position) and real.startswith(
                after, position + len(candidate)
            ):
                return candidate
        raise _unaligned()

    def _unmarked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(lambda found: self._texts[int(found.group(1))], value)
        if isinstance(value, Mapping):
            return {self._unmarked(k): self._unmarked(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._unmarked(item) for item in value]
        return value


def _renderings(text: str) -> Iterator[str]:
    """How templates write a caller's text: as it is, or trimmed."""
    yield from dict.fromkeys((text, text.strip(), text.lstrip(), text.rstrip()))


def _unaligned() -> ChatTemplateRejected:
    return ChatTemplateRejected(
        "it rewrites message text in a way that cannot be kept apart from its own markup"
    )
