"""What folding OpenAI's streamed chunks into a whole answer always does, whichever object
they make (`chat.completion` or `text_completion`): skip the receipt chunk (a whole answer
carries its receipt in headers), keep the first chunk's identity, take the finish reason and
the usage from the chunks that carry them, and wrap the one choice in the object's envelope.
What a choice's pieces add up to is each fold's own (`ChatFold`, `CompletionFold`).
"""

from __future__ import annotations

from typing import Any

from moonflower.coordinator import sse

RECEIPT_FIELD = "moonflower_receipt"
"""The field of the chunk that carries the provider's signed receipt."""


class ChunkFold:
    def __init__(self) -> None:
        self.head: dict[str, Any] | None = None
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def add(self, item: sse.Event) -> None:
        chunk = item.data
        if RECEIPT_FIELD in chunk:
            return
        self.head = self.head or chunk
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        for choice in chunk["choices"]:
            self._add_choice(choice)
            if choice["finish_reason"] is not None:
                self.finish = choice["finish_reason"]

    def _add_choice(self, choice: dict[str, Any]) -> None:
        """Gather one chunk's choice (its finish reason is taken care of)."""
        raise NotImplementedError

    def _whole(self, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        """The whole `kind` object around `choice`, once the stream has ended."""
        assert self.head is not None
        assert self.finish is not None
        assert self.usage is not None
        return {
            "id": self.head["id"],
            "object": kind,
            "created": self.head["created"],
            "model": self.head["model"],
            "system_fingerprint": self.head["system_fingerprint"],
            "choices": [{**choice, "finish_reason": self.finish}],
            "usage": self.usage,
        }
