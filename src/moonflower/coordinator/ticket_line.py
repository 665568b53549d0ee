"""One line per model of the requests waiting, on any replica, for a free slot: the order
in which the network's free slots go to them.

A request that must wait takes a ticket; tickets are numbered in the order they were taken
(one counter for the whole network), and the lowest number is first. A replica with a free
slot takes the first ticket out of the line (`give`), leaving the ticket's turn for its
holder: which replica's slot it got. The holder finds it when it next looks. The line only
keeps order and turns; who looks when, and what a holder does with its turn, belong to
`turns`.

A ticket lives only while its replica keeps looking: each `look` renews the tickets the
replica holds, and a ticket not renewed for `ttl_s` (its replica died, or lost its way to
Redis) is dropped by whoever looks next, so a dead replica holds up a line for seconds, not
for the whole wait.

Two backings behind one interface, `TicketLine`: `MemoryTicketLine` (one process) and
`RedisTicketLine`: per model a sorted set ordered by the tickets' numbers, a sorted set of
when each was last renewed (by Redis's own clock), a hash of each ticket's holder and trust
level, and a hash of the turns given and not yet found; each call is one Lua script.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from moonflower.coordinator.redis_store import RedisStore
from moonflower.coordinator.trust import TrustLevel

TICKET_TTL_S = 2.0
"""A ticket not renewed for this long is dropped: its replica no longer waits for it."""
TURN_TTL_S = 5.0
"""A turn its holder never came to find (it left meanwhile) is forgotten after this long."""


@dataclass(frozen=True, slots=True)
class First:
    """The first ticket in a line and the trust level its request needs."""

    ticket: str
    level: TrustLevel


@dataclass(frozen=True, slots=True)
class Sight:
    """What a replica sees when it looks at a line."""

    first: First | None
    turns: dict[str, str]
    """Turns given to the looker's tickets since it last looked: ticket → the giving
    replica's id. Each is reported once."""


class TicketLine(Protocol):
    async def join(
        self, model: str, ticket: str, *, holder: str, level: TrustLevel, room: int
    ) -> tuple[int, int] | None:
        """Put `ticket`, held by replica `holder` for a request that needs `level`, at the
        end of `model`'s line; its number (a larger number comes later) and how many tickets
        are ahead of it, or None when `room` tickets already wait."""
        ...

    async def look(self, model: str, holder: str, renew: Sequence[str]) -> Sight:
        """As replica `holder`: renew `renew` (tickets of its own), drop tickets nobody
        renewed, and say which ticket is first and which of its tickets were given a turn
        since it last looked."""
        ...

    async def give(self, model: str, ticket: str, *, giver: str) -> str | None:
        """Give a free slot of the replica `giver` ("id url") to `ticket` if it is still
        first: take it out of the line, leave its turn for its holder (unless that is the
        giver), and return the holder's id; else None."""
        ...

    async def leave(self, model: str, ticket: str, holder: str) -> int:
        """Take `ticket`, held by replica `holder`, out of the line (and forget its turn);
        how many tickets still wait."""
        ...

    async def waiting(self, model: str) -> int:
        """How many tickets wait for `model` (unrenewed ones included until dropped)."""
        ...


@dataclass
class _Line:
    numbers: dict[str, int] = field(default_factory=dict)
    renewed: dict[str, float] = field(default_factory=dict)
    holders: dict[str, tuple[str, TrustLevel]] = field(default_factory=dict)
    turns: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per holder: ticket → giver."""


class MemoryTicketLine:
    """Every line in this process (turns are kept until found or left, not timed out)."""

    def __init__(self, *, ttl_s: float = TICKET_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._lines: dict[str, _Line] = {}
        self._numbers = itertools.count(1)

    async def join(
        self, model: str, ticket: str, *, holder: str, level: TrustLevel, room: int
    ) -> tuple[int, int] | None:
        line = self._lines.setdefault(model, _Line())
        self._drop_stale(line)
        ahead = len(line.numbers)
        if ahead >= room:
            return None
        number = next(self._numbers)
        line.numbers[ticket] = number
        line.renewed[ticket] = time.monotonic()
        line.holders[ticket] = (holder, level)
        return number, ahead

    async def look(self, model: str, holder: str, renew: Sequence[str]) -> Sight:
        line = self._lines.get(model)
        if line is None:
            return Sight(None, {})
        now = time.monotonic()
        for ticket in renew:
            if ticket in line.renewed:
                line.renewed[ticket] = now
        self._drop_stale(line)
        turns = line.turns.pop(holder, {})
        first = min(line.numbers, key=line.numbers.__getitem__, default=None)
        if first is None:
            return Sight(None, turns)
        return Sight(First(first, line.holders[first][1]), turns)

    async def give(self, model: str, ticket: str, *, giver: str) -> str | None:
        line = self._lines.get(model)
        if line is None or min(line.numbers, key=line.numbers.__getitem__, default="") != ticket:
            return None
        holder, _level = line.holders.pop(ticket)
        del line.numbers[ticket], line.renewed[ticket]
        if holder != giver.split(" ")[0]:
            line.turns.setdefault(holder, {})[ticket] = giver
        return holder

    async def leave(self, model: str, ticket: str, holder: str) -> int:
        line = self._lines.get(model)
        if line is None:
            return 0
        line.numbers.pop(ticket, None)
        line.renewed.pop(ticket, None)
        line.holders.pop(ticket, None)
        line.turns.get(holder, {}).pop(ticket, None)
        return len(line.numbers)

    async def waiting(self, model: str) -> int:
        line = self._lines.get(model)
        return len(line.numbers) if line is not None else 0

    def _drop_stale(self, line: _Line) -> None:
        oldest = time.monotonic() - self._ttl_s
        for ticket in [t for t, at in line.renewed.items() if at < oldest]:
            del line.numbers[ticket], line.renewed[ticket], line.holders[ticket]


_NOW_MS = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
"""
_DROP_STALE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms - ttl_ms)
for _, ticket in ipairs(stale) do
    redis.call('ZREM', KEYS[1], ticket)
    redis.call('ZREM', KEYS[2], ticket)
    redis.call('HDEL', KEYS[3], ticket)
end
"""
_KEEP = """
for i = 1, 3 do
    redis.call('PEXPIRE', KEYS[i], ttl_ms * 2)
end
"""
_JOIN = (
    _NOW_MS
    + "local ttl_ms = tonumber(ARGV[2])\n"
    + _DROP_STALE
    + """
local ahead = redis.call('ZCARD', KEYS[1])
if ahead >= tonumber(ARGV[4]) then
    return false
end
local number = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], number, ARGV[1])
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
"""
    + _KEEP
    + "return {number, ahead}\n"
)
"""KEYS: the line, its renewals, its holders, the ticket counter; ARGV: ticket, ttl (ms),
"holder level", room."""
_LOOK = (
    _NOW_MS
    + "local ttl_ms = tonumber(ARGV[1])\n"
    + """
if #ARGV > 1 then
    local renewed = {}
    for i = 2, #ARGV do
        table.insert(renewed, now_ms)
        table.insert(renewed, ARGV[i])
    end
    redis.call('ZADD', KEYS[2], 'XX', unpack(renewed))
"""
    + _KEEP
    + """
end
"""
    + _DROP_STALE
    + """
local turns = redis.call('HGETALL', KEYS[4])
if #turns > 0 then
    redis.call('DEL', KEYS[4])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if not first then
    return {false, false, turns}
end
return {first, redis.call('HGET', KEYS[3], first), turns}
"""
)
"""KEYS: the line, its renewals, its holders, the looker's turns; ARGV: ttl (ms), then the
tickets to renew."""
_GIVE = """
if redis.call('ZRANGE', KEYS[1], 0, 0)[1] ~= ARGV[1] then
    return false
end
local held = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local holder = string.match(held, '^(%S+)')
if holder ~= ARGV[4] then
    local turns = ARGV[5] .. holder
    redis.call('HSET', turns, ARGV[1], ARGV[2])
    redis.call('PEXPIRE', turns, ARGV[3])
end
return held
"""
"""KEYS: the line, its renewals, its holders; ARGV: ticket, "giver url", turn ttl (ms), giver,
the prefix of the holders' turns (read by name: one Redis server, not a cluster). A turn the
giver gives itself is not written down: its holder has it already."""
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""
"""KEYS: the line, its renewals, its holders, the leaver's turns; ARGV: ticket."""


class RedisTicketLine:
    """The lines of every replica on one Redis (see the module's docstring)."""

    def __init__(self, store: RedisStore, *, ttl_s: float = TICKET_TTL_S) -> None:
        self._store = store
        self._ttl_ms = int(ttl_s * 1000)
        self._join = store.script(_JOIN)
        self._look = store.script(_LOOK)
        self._give = store.script(_GIVE)
        self._leave = store.script(_LEAVE)
        self._count = store.script("return redis.call('ZCARD', KEYS[1])")

    def _keys(self, model: str) -> list[str]:
        """The line, its renewals, its holders."""
        return [self._store.key(part, model) for part in ("line", "renewed", "holders")]

    def _turns_prefix(self, model: str) -> str:
        return self._store.key("turns", model, "")

    async def join(
        self, model: str, ticket: str, *, holder: str, level: TrustLevel, room: int
    ) -> tuple[int, int] | None:
        keys = [*self._keys(model), self._store.key("line-numbers")]
        args: list[str | int] = [ticket, self._ttl_ms, f"{holder} {level.value}", room]
        joined = await self._store.run(self._join, keys, args)
        if not isinstance(joined, list):
            return None
        number, ahead = joined
        return int(number), int(ahead)

    async def look(self, model: str, holder: str, renew: Sequence[str]) -> Sight:
        keys = [*self._keys(model), self._turns_prefix(model) + holder]
        reply = await self._store.run(self._look, keys, [self._ttl_ms, *renew])
        assert isinstance(reply, list)
        ticket, held, given = reply
        turns = dict(zip(given[::2], given[1::2], strict=True))
        if not isinstance(ticket, str) or not isinstance(held, str):
            return Sight(None, turns)
        return Sight(First(ticket, _level(held)), turns)

    async def give(self, model: str, ticket: str, *, giver: str) -> str | None:
        args: list[str | int] = [ticket, giver, int(TURN_TTL_S * 1000), giver.split(" ")[0]]
        args.append(self._turns_prefix(model))
        held = await self._store.run(self._give, self._keys(model), args)
        return held.split(" ")[0] if isinstance(held, str) else None

    async def leave(self, model: str, ticket: str, holder: str) -> int:
        keys = [*self._keys(model), self._turns_prefix(model) + holder]
        left = await self._store.run(self._leave, keys, [ticket])
        assert isinstance(left, int)
        return left

    async def waiting(self, model: str) -> int:
        count = await self._store.run(self._count, self._keys(model), [])
        assert isinstance(count, int)
        return count


def _level(held: str) -> TrustLevel:
    return TrustLevel(int(held.split(" ")[1]))
