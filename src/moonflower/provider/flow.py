"""Flow control for one job: a slow consumer slows the job's generation instead of piling up
its tokens somewhere on the way.

Two bounds, one on each side of the provider's event loop:
- the engine thread may run at most `ahead` events ahead of what has been sent (it blocks in
  `make_room`, so the model stops generating), and
- sending may run at most the coordinator's grant ahead: the job starts with
  `wire.FLOW_WINDOW_EVENTS` and the coordinator grants more (`job_credit`) as its consumer
  reads. Terminal events and receipts are never held back.
A cancel wakes every wait at once. No I/O here.
"""

from __future__ import annotations

import asyncio
import threading

from moonflower import wire

ENGINE_AHEAD_EVENTS = 16
"""Events the engine may produce before the oldest of them has been sent."""
_POLL_S = 0.05


class JobFlow:
    def __init__(self, cancel: threading.Event, *, ahead: int = ENGINE_AHEAD_EVENTS) -> None:
        self._cancel = cancel
        self._credit = wire.FLOW_WINDOW_EVENTS
        self._credit_changed = asyncio.Event()
        self._room = threading.Semaphore(ahead)

    def grant(self, events: int) -> None:
        """The coordinator's consumer read `events` more: that many more may be sent."""
        self._credit += events
        self._credit_changed.set()

    def wake(self) -> None:
        """Let every wait end now (the job is cancelled)."""
        self._credit_changed.set()

    async def spend(self) -> None:
        """Wait until one more event may be sent (or the job is cancelled)."""
        while self._credit <= 0 and not self._cancel.is_set():
            self._credit_changed.clear()
            await self._credit_changed.wait()
        self._credit -= 1

    def make_room(self) -> None:
        """(Engine thread) Wait until the engine may produce one more event."""
        while not self._room.acquire(timeout=_POLL_S):
            if self._cancel.is_set():
                return

    def sent(self) -> None:
        """An event the engine produced has left: room for one more."""
        self._room.release()
