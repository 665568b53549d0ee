"""The engine interface every inference backend implements (llama.cpp, MLX, test fakes).

An engine owns one loaded model. `generate` is a plain blocking iterator: the provider runs it
on a worker thread and checks nothing itself, so an engine must look at `cancel` between
tokens and stop within one token of it being set. Engines never see OpenAI or Anthropic
shapes, and never log prompt or completion text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from moonflower.generation import GenerationEvent, GenerationRequest
from moonflower.wire import ModelCard


class Engine(Protocol):
    """One loaded model, ready to generate."""

    @property
    def card(self) -> ModelCard:
        """What the model is (id, weight hash, context length, quantization, engine)."""
        ...

    @property
    def max_concurrent_jobs(self) -> int:
        """How many jobs `generate` may run at once; 1 for engines that are not re-entrant."""
        ...

    def generate(
        self, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        """Yield `Started`, then `TextDelta`s, then exactly one terminal event.

        A prompt that does not fit the context yields a single `Failed` with code
        `context_length_exceeded`. When `cancel` is set the engine stops before sampling
        the next token and yields `Finished(reason="cancelled")` with the tokens so far.
        """
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...
