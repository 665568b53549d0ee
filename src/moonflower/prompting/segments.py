"""A rendered prompt as segments: the template's markup, and the callers' own text.

The difference matters at tokenization: markup may spell control tokens (`<|im_start|>`,
`<start_of_turn>`) and is tokenized with them, while content — system, user, assistant and
tool text, tool descriptions and calls, raw completion prompts — is only ever text, whatever
it spells. Pure values: nothing here tokenizes or renders.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    is_content: bool
    """True for text a caller supplied: never parsed for control tokens."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt's text in order, each piece marked as markup or content."""

    segments: tuple[Segment, ...]

    @classmethod
    def of(cls, parts: Iterable[Segment]) -> Prompt:
        """The segments with empty ones dropped and neighbours of one kind joined."""
        joined: list[Segment] = []
        for part in parts:
            if not part.text:
                continue
            if joined and joined[-1].is_content == part.is_content:
                joined[-1] = Segment(joined[-1].text + part.text, part.is_content)
            else:
                joined.append(part)
        return cls(tuple(joined))

    @classmethod
    def content(cls, text: str) -> Prompt:
        """A prompt that is all the caller's text (a raw completion prompt)."""
        return cls.of([Segment(text, is_content=True)])

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments)

    def without_leading_markup(self, prefix: str) -> Prompt:
        """Drop `prefix` from the start when the template wrote it (a BOS the tokenizer is
        about to add anyway); content that happens to start with it is left alone."""
        if not prefix or not self.segments:
            return self
        first = self.segments[0]
        if first.is_content or not first.text.startswith(prefix):
            return self
        rest = Segment(first.text[len(prefix) :], is_content=False)
        return Prompt.of([rest, *self.segments[1:]])


def markup(text: str) -> Segment:
    return Segment(text, is_content=False)


def content(text: str) -> Segment:
    return Segment(text, is_content=True)
