"""Per-model queues: strict FIFO turns, refusal when full or after the wait, clean departure
of cancelled waiters, and `notify` reaching the right model's front waiter."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from moonflower import errors
from moonflower.coordinator.queueing import ModelQueues

MODEL = "m"


class Slots:
    """Free provider slots for one model, and who asked for one, in order."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.asked: list[str] = []

    def taker(self, name: str) -> Callable[[], str | None]:
        def take() -> str | None:
            self.asked.append(name)
            if self.free > 0:
                self.free -= 1
                return name
            return None

        return take


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(2):
        while not condition():
            await asyncio.sleep(0.001)


async def join(
    queues: ModelQueues, slots: Slots, names: list[str], model: str = MODEL
) -> list[asyncio.Task[str]]:
    """Start one waiter per name, each in the queue before the next arrives."""
    tasks = []
    for name in names:
        before = queues.waiting(model)
        tasks.append(asyncio.create_task(queues.wait_turn(model, slots.taker(name))))
        await until(lambda before=before: queues.waiting(model) == before + 1)  # type: ignore[misc]
    return tasks


async def served_in_order(
    queues: ModelQueues, slots: Slots, tasks: list[asyncio.Task[str]]
) -> list[str]:
    """Free one slot at a time, notifying each time; the names in the order they got one."""
    order: list[str] = []
    pending = set(tasks)
    while pending:
        slots.free += 1
        queues.notify(MODEL)
        async with asyncio.timeout(2):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        order.extend(task.result() for task in done)
    return order


async def test_a_free_slot_with_nobody_waiting_is_taken_at_once() -> None:
    queues = ModelQueues(max_waiting=4, max_wait_s=5)
    slots = Slots(free=1)
    assert await queues.wait_turn(MODEL, slots.taker("a")) == "a"
    assert queues.waiting(MODEL) == 0
    assert slots.asked == ["a"]


async def test_many_waiters_are_served_in_arrival_order() -> None:
    queues = ModelQueues(max_waiting=64, max_wait_s=10)
    slots = Slots()
    names = [f"w{i}" for i in range(40)]
    tasks = await join(queues, slots, names)
    assert queues.waiting(MODEL) == 40
    assert await served_in_order(queues, slots, tasks) == names
    assert queues.waiting(MODEL) == 0


async def test_only_the_front_waiter_is_asked_and_a_newcomer_never_overtakes() -> None:
    queues = ModelQueues(max_waiting=8, max_wait_s=10)
    slots = Slots()
    first, second = await join(queues, slots, ["first", "second"])
    assert slots.asked == ["first"]  # tried once on arrival; nobody waited yet
    slots.free = 1  # a slot frees but nobody has been told yet
    newcomer = asyncio.create_task(queues.wait_turn(MODEL, slots.taker("newcomer")))
    await until(lambda: queues.waiting(MODEL) == 3)
    assert "newcomer" not in slots.asked and slots.free == 1
    queues.notify(MODEL)
    assert await asyncio.wait_for(first, 2) == "first"
    await asyncio.sleep(0.01)
    assert not second.done() and not newcomer.done()
    # The one grant passes the turn on: the next waiter checks once, nobody further back.
    assert slots.asked == ["first", "first", "second"]
    assert await served_in_order(queues, slots, [second, newcomer]) == ["second", "newcomer"]


async def test_one_notify_drains_every_free_slot_in_order() -> None:
    queues = ModelQueues(max_waiting=16, max_wait_s=10)
    slots = Slots()
    tasks = await join(queues, slots, [f"w{i}" for i in range(8)])
    slots.free = 5
    queues.notify(MODEL)
    async with asyncio.timeout(2):
        await asyncio.gather(*tasks[:5])
    assert [t.result() for t in tasks[:5]] == [f"w{i}" for i in range(5)]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks[5:])
    assert queues.waiting(MODEL) == 3
    for task in tasks[5:]:
        task.cancel()
    await asyncio.gather(*tasks[5:], return_exceptions=True)


async def test_a_full_queue_refuses_at_once_with_a_retry_after() -> None:
    queues = ModelQueues(max_waiting=3, max_wait_s=20)
    slots = Slots()
    tasks = await join(queues, slots, ["a", "b", "c"])
    asked_before = list(slots.asked)
    async with asyncio.timeout(0.5):
        with pytest.raises(errors.Overloaded) as refused:
            await queues.wait_turn(MODEL, slots.taker("d"))
    assert slots.asked == asked_before  # people wait, so "d" may not even try
    assert isinstance(refused.value.retry_after_s, int)
    assert 1 <= refused.value.retry_after_s <= 20
    assert "'m'" in refused.value.message
    assert queues.waiting(MODEL) == 3
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert queues.waiting(MODEL) == 0


async def test_a_queue_of_size_zero_refuses_whenever_no_slot_is_free() -> None:
    queues = ModelQueues(max_waiting=0, max_wait_s=5)
    with pytest.raises(errors.Overloaded):
        await queues.wait_turn(MODEL, Slots().taker("a"))
    assert await queues.wait_turn(MODEL, Slots(free=1).taker("b")) == "b"


async def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue() -> None:
    queues = ModelQueues(max_waiting=4, max_wait_s=0.1)
    slots = Slots()
    started = asyncio.get_running_loop().time()
    with pytest.raises(errors.Overloaded) as refused:
        async with asyncio.timeout(2):
            await queues.wait_turn(MODEL, slots.taker("a"))
    waited = asyncio.get_running_loop().time() - started
    assert 0.09 <= waited < 1.0
    assert refused.value.retry_after_s == 1  # ceil(0.1 s), at least 1
    assert "0.1 s" in refused.value.message
    assert queues.waiting(MODEL) == 0


async def test_a_cancelled_waiter_in_the_middle_leaves_without_disturbing_the_order() -> None:
    queues = ModelQueues(max_waiting=8, max_wait_s=10)
    slots = Slots()
    a, b, c = await join(queues, slots, ["a", "b", "c"])
    b.cancel()
    await asyncio.gather(b, return_exceptions=True)
    assert queues.waiting(MODEL) == 2
    assert await served_in_order(queues, slots, [a, c]) == ["a", "c"]
    assert "b" not in slots.asked[1:]


async def test_a_woken_front_waiter_that_is_cancelled_passes_its_turn_on() -> None:
    queues = ModelQueues(max_waiting=8, max_wait_s=10)
    slots = Slots()
    a, b = await join(queues, slots, ["a", "b"])
    slots.free = 1
    queues.notify(MODEL)
    a.cancel()  # the client left before its wake-up ran
    await asyncio.gather(a, return_exceptions=True)
    assert a.cancelled()
    assert await asyncio.wait_for(b, 2) == "b"  # no second notify needed
    assert queues.waiting(MODEL) == 0


async def test_a_front_waiter_that_times_out_passes_its_turn_on() -> None:
    queues = ModelQueues(max_waiting=8, max_wait_s=0.2)
    slots = Slots()
    a = asyncio.create_task(queues.wait_turn(MODEL, slots.taker("a")))
    await until(lambda: queues.waiting(MODEL) == 1)
    await asyncio.sleep(0.1)
    b = asyncio.create_task(queues.wait_turn(MODEL, slots.taker("b")))
    await until(lambda: queues.waiting(MODEL) == 2)
    slots.free = 1  # freed without a notify; "a" gives up, and "b" must look
    with pytest.raises(errors.Overloaded):
        await asyncio.wait_for(a, 2)
    assert await asyncio.wait_for(b, 2) == "b"


async def test_notify_wakes_only_the_front_waiter_of_that_model() -> None:
    queues = ModelQueues(max_waiting=8, max_wait_s=10)
    slots_a, slots_b = Slots(), Slots()
    tasks_a = await join(queues, slots_a, ["a1", "a2"], model="A")
    tasks_b = await join(queues, slots_b, ["b1", "b2"], model="B")
    slots_a.free = slots_b.free = 1
    queues.notify("B")
    assert await asyncio.wait_for(tasks_b[0], 2) == "b1"
    await asyncio.sleep(0.01)
    assert slots_a.asked == ["a1"]  # only its own arrival check
    assert not any(t.done() for t in tasks_a)
    assert queues.waiting("A") == 2 and queues.waiting("B") == 1
    for task in [*tasks_a, tasks_b[1]]:
        task.cancel()
    await asyncio.gather(*tasks_a, tasks_b[1], return_exceptions=True)


async def test_notify_for_a_model_nobody_waits_for_does_nothing() -> None:
    queues = ModelQueues(max_waiting=8, max_wait_s=10)
    queues.notify("nobody")
    assert queues.waiting("nobody") == 0


async def test_an_error_from_try_take_reaches_the_caller_and_the_next_gets_the_turn() -> None:
    queues = ModelQueues(max_waiting=8, max_wait_s=10)
    slots = Slots()
    calls = 0

    def broken() -> str | None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise errors.NoProviderAvailable(MODEL)
        return None

    first = asyncio.create_task(queues.wait_turn(MODEL, broken))
    await until(lambda: queues.waiting(MODEL) == 1)
    (second,) = await join(queues, slots, ["second"])
    slots.free = 1
    queues.notify(MODEL)
    with pytest.raises(errors.NoProviderAvailable):
        await asyncio.wait_for(first, 2)
    assert await asyncio.wait_for(second, 2) == "second"


async def test_retry_after_is_max_wait_until_service_is_observed_then_follows_it() -> None:
    queues = ModelQueues(max_waiting=10, max_wait_s=30)
    assert queues.retry_after_s(MODEL) == 30
    slots = Slots()
    tasks = await join(queues, slots, [f"w{i}" for i in range(4)])
    for task in tasks:  # one grant every ~0.1 s while people wait
        await asyncio.sleep(0.1)
        slots.free += 1
        queues.notify(MODEL)
        await asyncio.wait_for(task, 2)
    more = await join(queues, slots, [f"x{i}" for i in range(10)])
    # ~0.1 s per turn (the first sample includes joining), 11 turns ahead of a newcomer.
    with pytest.raises(errors.Overloaded) as refused:
        await queues.wait_turn(MODEL, slots.taker("late"))
    assert 2 <= refused.value.retry_after_s <= 5
    assert refused.value.retry_after_s == queues.retry_after_s(MODEL)
    for task in more:
        task.cancel()
    await asyncio.gather(*more, return_exceptions=True)


async def test_retry_after_never_exceeds_the_longest_wait_and_is_a_whole_second() -> None:
    queues = ModelQueues(max_waiting=1000, max_wait_s=2.5)
    assert queues.retry_after_s(MODEL) == math.ceil(2.5)
    tiny = ModelQueues(max_waiting=1, max_wait_s=0.01)
    assert tiny.retry_after_s(MODEL) == 1
