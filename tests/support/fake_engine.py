"""A scripted engine for routing, queueing and failure tests — never proof that inference works.

It "generates" the words of a fixed script, one word per token (or, when `pieces` is set,
exactly those text pieces, one per token), optionally sleeping between tokens, and honours
cancel exactly as the Engine protocol asks. It records what happened so tests can assert
from the provider's side.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from moonflower.coordinator.tally import billable_tokens
from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Started,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from moonflower.wire import ModelCard


@dataclass
class ScriptedEngine:
    model_id: str = "fake-model"
    script: str = "one two three four five six seven eight nine ten"
    token_delay_s: float = 0.0
    start_delay_s: float = 0.0
    context_length: int = 512
    endings: list[Finished | Failed] = field(default_factory=list)
    requests: list[GenerationRequest] = field(default_factory=list)
    pieces: list[str] | None = None
    starts_in_reasoning: bool = False
    first_token_delay_s: float = 0.0
    """Silence after `Started` (ended early by a cancel), as a provider stuck in prefill."""
    fails_before_first_token: bool = False
    """Accept the prompt, then fail with `engine_error` before any text."""
    tokens_produced: int = 0
    """Tokens yielded so far, over all jobs (the engine's progress, seen from outside)."""

    @property
    def card(self) -> ModelCard:
        return ModelCard(
            id=self.model_id,
            sha256="0" * 64,
            context_length=self.context_length,
            quantization=None,
            engine="scripted",
            size_bytes=0,
        )

    @property
    def max_concurrent_jobs(self) -> int:
        return 2

    def generate(
        self, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        self.requests.append(request)
        prompt_tokens = sum(len(m.content.split()) for m in request.messages) or 1
        if prompt_tokens >= self.context_length:
            ending: Finished | Failed = Failed(
                code="context_length_exceeded", message="too long", param="messages"
            )
            self.endings.append(ending)
            yield ending
            return
        time.sleep(self.start_delay_s)
        yield Started(prompt_tokens=prompt_tokens, starts_in_reasoning=self.starts_in_reasoning)
        if self.fails_before_first_token:
            failure = Failed(code="engine_error", message="scripted failure")
            self.endings.append(failure)
            yield failure
            return
        silent_until = time.monotonic() + self.first_token_delay_s
        while time.monotonic() < silent_until and not cancel.is_set():
            time.sleep(0.01)
        tokens = self.pieces
        if tokens is None:
            tokens = [("" if i == 0 else " ") + word for i, word in enumerate(self.script.split())]
        limit = len(tokens) if request.max_tokens is None else request.max_tokens
        produced = 0
        reason = "stop"
        while True:
            if cancel.is_set():
                reason = "cancelled"
                break
            if produced >= limit:
                reason = "length"
                break
            if produced >= len(tokens):
                break
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            yield TextDelta(text=tokens[produced], tokens=1)
            produced += 1
            self.tokens_produced += 1
        ending = Finished(reason=reason, usage=Usage(prompt_tokens, produced))  # type: ignore[arg-type]
        self.endings.append(ending)
        yield ending

    def close(self) -> None:
        pass


GATE_TIMEOUT_S = 30.0
"""A gated job goes on by itself after this long, so a failed test cannot hang its engine."""


@dataclass
class GatedEngine(ScriptedEngine):
    """A scripted engine whose jobs wait, once started, until the test lets them go: each by
    the content of its first message (`release`), or all at once (`release_all`). With it a
    test decides when a slot frees instead of guessing how long a job takes. With
    `holds_start`, a job waits before it even accepts its prompt (and is recorded in
    `requests` only then): a provider that never starts until cancelled or released."""

    holds_start: bool = False
    gates: dict[str, threading.Event] = field(default_factory=dict)
    is_open: threading.Event = field(default_factory=threading.Event)

    def gate(self, tag: str) -> threading.Event:
        return self.gates.setdefault(tag, threading.Event())

    def release(self, tag: str) -> None:
        self.gate(tag).set()

    def release_all(self) -> None:
        self.is_open.set()

    def generate(
        self, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        events = super().generate(request, cancel)
        if self.holds_start:
            self._wait(request, cancel)
        yield next(events)  # records the request; `started` (or a failure)
        if not self.holds_start:
            self._wait(request, cancel)
        yield from events

    def _wait(self, request: GenerationRequest, cancel: threading.Event) -> None:
        gate = self.gate(request.messages[0].content if request.messages else "")
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not (gate.is_set() or self.is_open.is_set() or cancel.is_set()):
            if time.monotonic() > deadline:
                return
            gate.wait(0.01)


def counted(events: Iterable[GenerationEvent]) -> list[GenerationEvent]:
    """`events` with their deltas' token counts filled in as an honest engine would: the
    completion count the `Finished` event states (one per delta if none does), spread over
    the deltas no more densely than their bytes can carry. Scripts that already give any
    delta a count are returned as they are."""
    events = list(events)
    deltas = [i for i, e in enumerate(events) if isinstance(e, TextDelta | ToolCallDelta)]
    if any(events[i].tokens for i in deltas):  # type: ignore[union-attr]
        return events
    total = next((e.usage.completion_tokens for e in events if isinstance(e, Finished)), None)
    left = len(deltas) if total is None else total
    shares = dict.fromkeys(deltas, 0)
    while left > 0 and deltas:
        before = left
        for i in deltas:
            event = events[i]
            assert isinstance(event, TextDelta | ToolCallDelta)
            if left > 0 and shares[i] < max(
                billable_tokens(dataclasses.replace(event, tokens=10**6)), 1
            ):
                shares[i] += 1
                left -= 1
        if left == before:  # no room anywhere: the rest rides on the last delta
            shares[deltas[-1]] += left
            left = 0
    for i, share in shares.items():
        events[i] = dataclasses.replace(events[i], tokens=share)  # type: ignore[type-var]
    return events
