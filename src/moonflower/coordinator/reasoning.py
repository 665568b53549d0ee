"""Splits `<think>…</think>` reasoning out of generated text, across chunk boundaries.

PLACEHOLDER: passes events through unchanged until the real splitter lands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from moonflower.generation import OutputEvent


async def split_reasoning(
    events: AsyncIterator[OutputEvent], *, starts_in_reasoning: bool = False
) -> AsyncIterator[OutputEvent]:
    async for event in events:
        yield event
