"""A fixed set of inference contexts, each lent to one job at a time.

A llama.cpp context is not re-entrant, but several contexts over the same weights run in
parallel. The pool owns lending them: a job waits for a free context (noticing its cancel
event while it waits), uses it alone, and gives it back however it ended. It knows nothing
about what a context is, so tests can lend plain objects.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

Context = TypeVar("Context")

POLL_S = 0.05
"""How often a job waiting for a context looks at its cancel event."""


class ContextPool(Generic[Context]):
    """Lends each of `contexts` to one holder at a time."""

    def __init__(self, contexts: Sequence[Context]) -> None:
        if not contexts:
            raise ValueError("a context pool needs at least one context")
        # Last in, first out: the context used most recently has the warmest caches.
        self._free: queue.LifoQueue[Context] = queue.LifoQueue()
        for context in contexts:
            self._free.put(context)
        self._size = len(contexts)

    @property
    def size(self) -> int:
        return self._size

    @contextmanager
    def lend(self, cancel: threading.Event) -> Iterator[Context | None]:
        """A free context for the `with` block, or None if `cancel` was set before one
        came free. The context goes back when the block ends, however it ends."""
        context = self._take(cancel)
        if context is None:
            yield None
            return
        try:
            yield context
        finally:
            self._free.put(context)

    def close(self, close_one: Callable[[Context], None]) -> None:
        """Wait for every context to come back, then `close_one` each."""
        for _ in range(self._size):
            close_one(self._free.get())

    def _take(self, cancel: threading.Event) -> Context | None:
        while True:
            try:
                return self._free.get(timeout=POLL_S)
            except queue.Empty:
                if cancel.is_set():
                    return None
