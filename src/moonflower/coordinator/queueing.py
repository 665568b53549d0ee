"""Per-model queues of requests waiting for a provider slot.

`ModelQueues` owns only the waiting: who is next for a model, waking them when a slot may
have freed, and giving up (as `errors.Overloaded`, with a retry-after estimate) when the
queue is full or the wait runs out. It never picks a provider itself — the caller's
`try_take` does — and holds no request data beyond its waiters.

Strict FIFO per model: a newcomer only takes a slot at once when nobody is waiting, and only
the front waiter ever tries to take one. A waiter that takes a slot passes the turn on to the
next (more than one slot may have freed), so one `notify` drains every free slot. The price
of strictness: a front waiter that cannot use the slot that freed (it asks for a higher trust
level, say) holds those behind it until it is served or its wait runs out.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from moonflower import errors
from moonflower.coordinator.metrics import Metrics

T = TypeVar("T")

SERVICE_TIME_WEIGHT = 0.3
"""Weight of the newest sample in the moving average of time per served waiter."""
MAX_TRACKED_MODELS = 4096
"""Models whose service time is remembered; the least recently served are forgotten."""


@dataclass(eq=False, slots=True)
class _Waiter:
    is_woken: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False, slots=True)
class _Line:
    """One model's waiters, oldest first; it exists only while someone waits."""

    turn_started: float
    """When the current front waiter's turn began (the line forming, or the last grant)."""
    waiters: OrderedDict[_Waiter, None] = field(default_factory=OrderedDict)

    def front(self) -> _Waiter | None:
        return next(iter(self.waiters), None)


class ModelQueues:
    def __init__(
        self, max_waiting: int, max_wait_s: float, *, metrics: Metrics | None = None
    ) -> None:
        self._metrics = metrics
        self._max_waiting = max_waiting
        self._max_wait_s = max_wait_s
        self._lines: dict[str, _Line] = {}
        self._service_s: OrderedDict[str, float] = OrderedDict()
        self._on_notify: list[Callable[[str], None]] = []
        self._on_taken: list[Callable[[str], None]] = []

    async def wait_turn(self, model: str, try_take: Callable[[], T | None]) -> T:
        """What `try_take` gives once it is this caller's turn and it gives something.

        Raises `errors.Overloaded` at once if `max_waiting` callers already wait for `model`,
        or once `max_wait_s` has passed. An exception from `try_take` propagates (the caller
        leaves the queue). Cancelling the caller removes it from the queue cleanly.
        """
        if model not in self._lines:
            taken = try_take()
            if taken is not None:
                self._took(model)
                return taken
        self.check_room(model)
        loop = asyncio.get_running_loop()
        line = self._lines.get(model)
        if line is None:
            line = self._lines[model] = _Line(turn_started=loop.time())
        waiter = _Waiter()
        line.waiters[waiter] = None
        joined_at = loop.time()
        try:
            async with asyncio.timeout(self._max_wait_s):
                while True:
                    await waiter.is_woken.wait()
                    waiter.is_woken.clear()
                    taken = try_take()
                    if taken is not None:
                        self._observe_turn(model, line, loop.time())
                        if self._metrics is not None:
                            self._metrics.waited(model, loop.time() - joined_at)
                        self._took(model)
                        return taken
        except TimeoutError:
            if self._metrics is not None:
                self._metrics.turned_away(model)
            retry_after_s = self.retry_after_s(model)
            raise errors.Overloaded(
                f"Every provider serving '{model}' stayed busy for {self._max_wait_s:g} s; "
                f"try again in {retry_after_s} s.",
                retry_after_s=retry_after_s,
            ) from None
        finally:
            self._leave(model, line, waiter)

    def check_room(self, model: str) -> None:
        """Raise `Overloaded` now if a newcomer for `model` could not even join its queue."""
        if self.waiting(model) >= self._max_waiting:
            if self._metrics is not None:
                self._metrics.turned_away(model)
            retry_after_s = self.retry_after_s(model)
            raise errors.Overloaded(
                f"Every provider serving '{model}' is busy and {self._max_waiting} requests "
                f"are already waiting; try again in {retry_after_s} s.",
                retry_after_s=retry_after_s,
            )

    def listen(self, *, freed: Callable[[str], None], taken: Callable[[str], None]) -> None:
        """Call `freed(model)` whenever a slot for `model` may have freed, and `taken(model)`
        whenever a request took one or was refused before it could (`gave_up`): `turns`
        hands slots to the line across replicas, and keeps one promised until then."""
        self._on_notify.append(freed)
        self._on_taken.append(taken)

    def notify(self, model: str) -> None:
        """A slot for `model` may have freed: the front waiter tries to take it."""
        for on_notify in self._on_notify:
            on_notify(model)
        line = self._lines.get(model)
        front = line.front() if line is not None else None
        if front is not None:
            front.is_woken.set()

    def gave_up(self, model: str) -> None:
        """A request for `model` was refused or failed before it took a slot."""
        self._took(model)

    def _took(self, model: str) -> None:
        for on_taken in self._on_taken:
            on_taken(model)

    def depths(self) -> dict[str, int]:
        """How many wait, for each model someone waits for."""
        return {model: len(line.waiters) for model, line in self._lines.items()}

    def waiting(self, model: str) -> int:
        line = self._lines.get(model)
        return len(line.waiters) if line is not None else 0

    def retry_after_s(self, model: str) -> int:
        """Whole seconds (at least 1) after which a request for `model` could expect a turn:
        the observed time per served waiter times the waiters ahead, or `max_wait_s` before
        anything was observed; never more than `max_wait_s`, by when every current waiter
        has been served or has given up."""
        per_turn = self._service_s.get(model)
        expected = self._max_wait_s if per_turn is None else per_turn * (self.waiting(model) + 1)
        return max(1, math.ceil(min(expected, self._max_wait_s)))

    def _leave(self, model: str, line: _Line, waiter: _Waiter) -> None:
        was_front = line.front() is waiter
        del line.waiters[waiter]
        if not line.waiters:
            if self._lines.get(model) is line:
                del self._lines[model]
        elif was_front:
            # The turn passes on: after a grant more slots may be free, and a front waiter
            # that timed out or was cancelled may have been woken for a slot nobody took.
            front = line.front()
            assert front is not None
            front.is_woken.set()

    def _observe_turn(self, model: str, line: _Line, now: float) -> None:
        sample = now - line.turn_started
        line.turn_started = now
        previous = self._service_s.pop(model, None)
        self._service_s[model] = (
            sample if previous is None else previous + SERVICE_TIME_WEIGHT * (sample - previous)
        )
        if len(self._service_s) > MAX_TRACKED_MODELS:
            self._service_s.popitem(last=False)
