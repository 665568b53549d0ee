"""One contract for every ticket line: the in-memory one and the Redis one (replicas, each on
its own client of one real Redis server). Tickets come first in the order they were taken,
whichever replica took them; a slot goes only to the first ticket, once, and its holder finds
the turn once; a full line refuses a newcomer; a ticket its replica stopped renewing is
dropped while the others stay; each model has its own line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from moonflower.coordinator.redis_store import RedisStore
from moonflower.coordinator.ticket_line import (
    First,
    MemoryTicketLine,
    RedisTicketLine,
    TicketLine,
)
from moonflower.coordinator.trust import TrustLevel

TTL_S = 0.3
"""Short, so that a ticket nobody renews is dropped within the test."""
DROPPED_WITHIN_S = 5.0

MakeLine = Callable[[], TicketLine]
"""Each call: another replica's view of the same lines."""


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_line(request: pytest.FixtureRequest) -> AsyncIterator[MakeLine]:
    if request.param == "memory":
        line = MemoryTicketLine(ttl_s=TTL_S)
        yield lambda: line
        return
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    stores: list[RedisStore] = []

    def make() -> TicketLine:
        stores.append(RedisStore.connect(url, prefix=prefix))
        return RedisTicketLine(stores[-1], ttl_s=TTL_S)

    yield make
    for store in stores:
        await store.aclose()


async def join(line: TicketLine, ticket: str, *, holder: str = "a", room: int = 10) -> int:
    """Join `ticket` to model "m"'s line; how many were ahead."""
    joined = await line.join("m", ticket, holder=holder, level=TrustLevel.NONE, room=room)
    assert joined is not None, "the line refused the ticket"
    return joined[1]


async def test_tickets_come_first_in_the_order_they_were_taken_on_any_replica(
    make_line: MakeLine,
) -> None:
    a, b = make_line(), make_line()
    assert (await a.look("m", "a", [])).first is None
    assert [await join(a, "t1"), await join(b, "t2", holder="b"), await join(a, "t3")] == [0, 1, 2]
    first = (await b.look("m", "b", ["t2"])).first
    assert first is not None and first.ticket == "t1"
    assert await a.leave("m", "t1", "a") == 2
    assert (await a.look("m", "a", ["t3"])).first == First("t2", TrustLevel.NONE)
    assert await b.leave("m", "t2", "b") == 1
    assert await b.leave("m", "t3", "a") == 0
    assert (await a.look("m", "a", [])).first is None
    assert await b.waiting("m") == 0


async def test_a_slot_given_to_the_first_ticket_is_a_turn_its_holder_finds_once(
    make_line: MakeLine,
) -> None:
    a, b = make_line(), make_line()
    await join(a, "t1", holder="a")
    joined = await b.join("m", "t2", holder="b", level=TrustLevel.HARDWARE, room=10)
    assert joined is not None
    assert await b.give("m", "t2", giver="b http://b") is None  # not first: nothing given
    assert await b.give("m", "t1", giver="b http://b") == "a"
    assert await b.give("m", "t1", giver="b http://b") is None  # given once only
    assert (await b.look("m", "b", ["t2"])).first == First("t2", TrustLevel.HARDWARE)
    assert (await a.look("m", "a", [])).turns == {"t1": "b http://b"}
    assert (await a.look("m", "a", [])).turns == {}  # found once
    # A slot a replica gives its own ticket leaves no turn behind: it has it already.
    assert await b.give("m", "t2", giver="b http://b") == "b"
    assert (await b.look("m", "b", [])).turns == {}
    assert await a.waiting("m") == 0


async def test_a_ticket_that_leaves_forgets_its_turn(make_line: MakeLine) -> None:
    a, b = make_line(), make_line()
    await join(a, "t1")
    assert await b.give("m", "t1", giver="b http://b") == "a"
    assert await a.leave("m", "t1", "a") == 0
    assert (await a.look("m", "a", [])).turns == {}


async def test_a_full_line_refuses_a_newcomer_until_someone_leaves(make_line: MakeLine) -> None:
    a, b = make_line(), make_line()
    await join(a, "t1", room=2)
    await join(b, "t2", room=2)
    assert await b.join("m", "t3", holder="b", level=TrustLevel.NONE, room=2) is None
    assert await a.waiting("m") == 2
    await a.leave("m", "t1", "a")
    assert await join(b, "t3", room=2) == 1


async def test_each_model_has_its_own_line(make_line: MakeLine) -> None:
    line = make_line()
    await join(line, "t1", room=1)
    joined = await line.join("other", "t2", holder="a", level=TrustLevel.NONE, room=1)
    assert joined is not None and joined[1] == 0
    assert (await line.look("other", "a", [])).first == First("t2", TrustLevel.NONE)
    assert (await line.look("m", "a", [])).first == First("t1", TrustLevel.NONE)


async def test_a_ticket_nobody_renews_is_dropped_and_a_renewed_one_stays(
    make_line: MakeLine,
) -> None:
    dead, alive = make_line(), make_line()
    await join(dead, "from-a-dead-replica", holder="dead")
    await join(alive, "kept", holder="alive")
    deadline = time.monotonic() + DROPPED_WITHIN_S
    first = (await alive.look("m", "alive", ["kept"])).first
    while first is not None and first.ticket == "from-a-dead-replica":
        assert time.monotonic() < deadline, "the unrenewed ticket was never dropped"
        await asyncio.sleep(0.02)
        first = (await alive.look("m", "alive", ["kept"])).first  # renews its own each time
    assert first == First("kept", TrustLevel.NONE)
    assert await alive.waiting("m") == 1
