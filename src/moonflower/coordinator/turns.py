"""Whose turn it is, across replicas, when every slot for a model is busy.

Each replica queues its own requests for its own providers (`queueing`). With replicas that
is not enough: a slot that frees on one replica would go to whoever reaches that replica
next, while a request that came earlier waits on another. So a request that finds no free
slot anywhere, or finds that others already wait for its model, takes a ticket in the
model's line (`ticket_line`), shared by every replica, and waits there before it is
admitted. A replica with a free slot gives it to the first ticket in the line, whichever
replica holds it; the holder serves its request here when the slot is its own and forwards
it to the giver otherwise (`forwarding`). Nothing else takes a slot while the line is not
empty: a newcomer on any replica joins the end of it.

Only the replica that owns a slot gives it, so a slot is never promised twice: once given,
it is not counted as free until a request takes a slot here (or `HANDED_S` passes: the
request died on its way).

Each replica runs one loop per model while it holds tickets for it, or has a slot to give
while others wait: it renews its tickets, collects the turns given to them, and gives its
free slots away. It looks again when one of its slots frees or the line moves (a
`broadcast`), and every `POLL_S` otherwise.

A replica learns that requests wait for a model from that broadcast; until a look shows
the line empty again, its newcomers for the model take tickets too. A replica with free
slots and no line does not talk to Redis here at all.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from moonflower import errors
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.ticket_line import TICKET_TTL_S, TicketLine
from moonflower.coordinator.trust import TrustLevel

log = logging.getLogger(__name__)

POLL_S = 0.05
"""How often a replica with tickets or a slot to give looks at the line unprompted."""
HANDED_S = 2.0
"""How long a slot given to a ticket stays promised if no request takes a slot here (the
request died on its way, say)."""
RENEW_EVERY_S = TICKET_TTL_S / 4
"""How often a replica renews the tickets it holds."""
ANNOUNCE_EVERY_S = 1.0
"""How often the holder of the first ticket reminds the other replicas that it waits (an
announcement can be lost)."""


@dataclass(frozen=True, slots=True)
class Turn:
    """The replica whose slot a request got."""

    replica_id: str
    url: str


@dataclass(eq=False)
class _Ticket:
    id: str
    number: int
    turn: asyncio.Future[Turn | None]


@dataclass(eq=False)
class _Model:
    """This replica's part in one model's line."""

    held: list[_Ticket] = field(default_factory=list)
    """Its tickets, lowest number first."""
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    looking: asyncio.Task[None] | None = None

    def hand(self, ticket_id: str, turn: Turn | None) -> None:
        for ticket in self.held:
            if ticket.id == ticket_id:
                self.held.remove(ticket)
                if not ticket.turn.done():
                    ticket.turn.set_result(turn)
                return


class Turns:
    def __init__(
        self,
        line: TicketLine,
        registry: Registry,
        queued_here: Callable[[str], int],
        *,
        replica_id: str,
        url: str,
        room: int,
        max_wait_s: float,
        poll_s: float = POLL_S,
    ) -> None:
        self._line = line
        self._registry = registry
        self._queued_here = queued_here
        """How many requests for a model wait in this replica's own queue (`queueing`):
        they had their turn already, so its free slots are theirs first."""
        self._me = Turn(replica_id, url)
        self._room = room
        self._max_wait_s = max_wait_s
        self._poll_s = poll_s
        self._formed: set[str] = set()
        """Models whose line others may wait in (a `line_moved` was heard)."""
        self._models: dict[str, _Model] = {}
        self._handed: dict[str, list[float]] = {}
        """Per model, when this replica gave its slots lately."""
        self.announce: Callable[[str], Awaitable[None]] | None = None
        """Tells every replica that a model's line formed or moved (`broadcast`)."""

    def has_line(self, model: str) -> bool:
        """Whether a newcomer for `model` must join the line: requests may wait for it
        somewhere, or a slot here was just given to one of them."""
        return model in self._formed or model in self._models or self._promised(model) > 0

    # --- what this replica hears -------------------------------------------------------

    def line_moved(self, model: str) -> None:
        """Requests wait for `model` somewhere, and their line formed or moved."""
        self._formed.add(model)
        self._wake(model)

    def slot_freed(self, model: str) -> None:
        """One of this replica's slots for `model` freed: the line has it first."""
        if self.has_line(model):
            self._wake(model)

    def slot_taken(self, model: str) -> None:
        """A request took a slot here for `model`: the oldest promise is kept (while others
        wait, only a request whose turn came takes a slot)."""
        handed = self._handed.get(model)
        if handed:
            handed.pop(0)
            if not handed:
                del self._handed[model]

    def key_revoked(self, key_hash: str) -> None:
        """Not about lines (a `broadcast.Listener` hears every event)."""

    def prices_changed(self) -> None:
        """Not about lines."""

    def may_have_missed(self) -> None:
        """Announcements may have been lost: every model served here may have a line,
        until a look shows otherwise."""
        for model in self._registry.models():
            self.line_moved(model)

    # --- waiting ---------------------------------------------------------------------------

    async def wait_turn(self, model: str, level: TrustLevel) -> Turn | None:
        """Take a ticket for `model` (for a request that needs `level`) and wait for its
        turn: None to serve the request on this replica, or the replica to forward it to.

        Raises `errors.Overloaded` when the line is full or the turn does not come within
        the queue's longest wait, `errors.StoreUnavailable` when Redis does not answer."""
        ticket_id = uuid.uuid4().hex
        joined = await self._line.join(
            model, ticket_id, holder=self._me.replica_id, level=level, room=self._room
        )
        if joined is None:
            raise errors.Overloaded(
                f"Every provider serving '{model}' is busy and {self._room} requests are "
                "already waiting; try again in a few seconds.",
                retry_after_s=self._retry_after_s(),
            )
        number, ahead = joined
        ticket = _Ticket(ticket_id, number, asyncio.get_running_loop().create_future())
        part = self._wake(model)
        bisect.insort(part.held, ticket, key=lambda t: t.number)
        if ahead == 0:
            await self._announce(model)
        try:
            async with asyncio.timeout(self._max_wait_s):
                return await asyncio.shield(ticket.turn)
        except TimeoutError:
            raise errors.Overloaded(
                f"Every provider serving '{model}' stayed busy for {self._max_wait_s:g} s; "
                "try again in a few seconds.",
                retry_after_s=self._retry_after_s(),
            ) from None
        finally:
            if ticket in part.held:
                part.held.remove(ticket)
                with contextlib.suppress(errors.StoreUnavailable):
                    await self._line.leave(model, ticket.id, self._me.replica_id)

    def _retry_after_s(self) -> int:
        return max(1, round(self._max_wait_s / 2))

    # --- the loop ------------------------------------------------------------------------

    def _wake(self, model: str) -> _Model:
        part = self._models.get(model)
        if part is None:
            part = self._models[model] = _Model()
        part.woken.set()
        if part.looking is None:
            part.looking = asyncio.create_task(self._look(model, part))
        return part

    async def _look(self, model: str, part: _Model) -> None:
        """Collect turns for this replica's tickets and give its free slots away, until it
        holds no ticket and has nothing to give."""
        announced = renewed = time.monotonic()
        try:
            while True:
                part.woken.clear()
                renew: list[str] = []
                if time.monotonic() - renewed > RENEW_EVERY_S:
                    renewed = time.monotonic()
                    renew = [t.id for t in part.held]
                sight = await self._line.look(model, self._me.replica_id, renew)
                for ticket_id, giver in sight.turns.items():
                    replica_id, _, url = giver.partition(" ")
                    part.hand(ticket_id, Turn(replica_id, url))
                first = sight.first
                if first is None:
                    self._formed.discard(model)
                    # Tickets of ours the line no longer has (Redis lost them) are served
                    # here, in this replica's own queue.
                    for ticket in list(part.held):
                        part.hand(ticket.id, None)
                    return
                if self._free_here(model, first.level) > 0:
                    if await self._give(model, part, first.ticket):
                        continue
                elif not part.held:
                    return  # nothing to wait for, nothing to give: a freed slot wakes it
                if (
                    part.held
                    and first is not None
                    and first.ticket == part.held[0].id
                    and time.monotonic() - announced > ANNOUNCE_EVERY_S
                ):
                    announced = time.monotonic()
                    await self._announce(model)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(part.woken.wait(), self._poll_s)
        except errors.StoreUnavailable as error:
            self._fail(part, error)
        except Exception:  # a background task: nobody else would see it
            log.exception("looking at the line for a model failed")
            self._fail(part, errors.StoreUnavailable(retry_after_s=1))
        finally:
            if self._models.get(model) is part:
                del self._models[model]
                if part.held:  # tickets joined after the last look: look again for them
                    self._models[model] = part
                    part.looking = asyncio.create_task(self._look(model, part))

    async def _give(self, model: str, part: _Model, ticket_id: str) -> bool:
        """Give one free slot here to the first ticket; whether it was still first."""
        giver = f"{self._me.replica_id} {self._me.url}"
        holder = await self._line.give(model, ticket_id, giver=giver)
        if holder is None:
            return False
        self._handed.setdefault(model, []).append(time.monotonic())
        if holder == self._me.replica_id:
            part.hand(ticket_id, None)
        else:
            await self._announce(model)  # the holder looks at once
        return True

    def _free_here(self, model: str, level: TrustLevel) -> int:
        """Slots free here at `level` that nobody was promised."""
        free = sum(
            max(0, s.registration.max_concurrent_jobs - s.active_jobs)
            for s in self._registry.serving(model, level)
        )
        return free - self._queued_here(model) - self._promised(model)

    def _promised(self, model: str) -> int:
        """Slots given lately whose requests may not have taken them yet."""
        handed = self._handed.get(model)
        if handed is None:
            return 0
        since = time.monotonic() - HANDED_S
        handed[:] = [at for at in handed if at >= since]
        if not handed:
            del self._handed[model]
        return len(handed)

    async def _announce(self, model: str) -> None:
        if self.announce is not None:
            with contextlib.suppress(errors.StoreUnavailable):
                await self.announce(model)

    def _fail(self, part: _Model, error: errors.MoonflowerError) -> None:
        """Every ticket held fails with `error` (its request answers at once)."""
        for ticket in part.held:
            if not ticket.turn.done():
                ticket.turn.set_exception(error)
        part.held.clear()
