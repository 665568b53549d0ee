"""Per-key rate limits on a controlled clock: requests and tokens per minute, the retry-after
they name, independence of keys, and the memory they keep."""

from __future__ import annotations

import pytest

from moonflower import errors
from moonflower.coordinator.limits import RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def refused(limits: RateLimits, key: str) -> errors.RateLimited:
    with pytest.raises(errors.RateLimited) as caught:
        await limits.admit(key)
    return caught.value


async def test_requests_per_minute_admits_the_allowance_then_names_the_wait() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=3, tokens_per_minute=None, clock=clock)
    for _ in range(3):
        await limits.admit("k")
    error = await refused(limits, "k")
    assert error.limit == "requests"
    assert error.retry_after_s == 20  # one request refills every 60 / 3 s
    assert "requests" in error.message and "3 per minute" in error.message
    clock.advance(19)
    assert (await refused(limits, "k")).retry_after_s == 1
    clock.advance(1)
    await limits.admit("k")
    assert (await refused(limits, "k")).retry_after_s == 20


async def test_waiting_the_named_retry_after_is_always_enough() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=7, tokens_per_minute=None, clock=clock)
    waits: list[int] = []
    for _ in range(200):
        try:
            await limits.admit("k")
        except errors.RateLimited as error:
            waits.append(error.retry_after_s)
            clock.advance(error.retry_after_s)
            await limits.admit("k")  # never refused twice in a row
    assert waits and all(isinstance(w, int) and w >= 1 for w in waits)


async def test_refused_requests_are_not_counted() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=None, clock=clock)
    await limits.admit("k")
    await limits.admit("k")
    for _ in range(50):
        await refused(limits, "k")
    clock.advance(30)
    await limits.admit("k")


async def test_a_sustained_rate_is_the_limit_per_minute() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=60, tokens_per_minute=None, clock=clock)
    for _ in range(60):
        await limits.admit("k")
    admitted = 0
    for _ in range(600):  # ten minutes in tenths of a second
        clock.advance(0.1)
        try:
            await limits.admit("k")
            admitted += 1
        except errors.RateLimited:
            pass
    assert admitted == pytest.approx(60, abs=1)


async def test_keys_are_limited_independently() -> None:
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=None, clock=Clock())
    await limits.admit("a")
    await refused(limits, "a")
    await limits.admit("b")


async def test_tokens_over_the_minute_refuse_until_enough_have_refilled() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=1000, clock=clock)
    await limits.admit("k")
    await limits.record_tokens("k", 1500)
    error = await refused(limits, "k")
    assert error.limit == "tokens"
    assert error.retry_after_s == 30  # 500 over, refilling 1000 per 60 s
    clock.advance(29)
    assert (await refused(limits, "k")).retry_after_s == 1
    clock.advance(1)
    await limits.admit("k")


async def test_tokens_only_refuse_once_the_minute_is_exceeded() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=1000, clock=clock)
    await limits.record_tokens("k", 600)
    await limits.record_tokens("k", 400)
    await limits.admit("k")  # exactly at the limit, not over it
    await limits.record_tokens("k", 1)
    assert (await refused(limits, "k")).limit == "tokens"


async def test_when_both_limits_are_over_the_longer_wait_is_named() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=100, clock=clock)
    await limits.admit("k")
    await limits.admit("k")
    await limits.record_tokens("k", 200)  # 100 over: 60 s; the next request refills in 30 s
    error = await refused(limits, "k")
    assert (error.limit, error.retry_after_s) == ("tokens", 60)
    clock.advance(120)  # everything refilled
    await limits.admit("k")
    await limits.admit("k")
    await limits.record_tokens("k", 50)  # under the tokens; the requests are spent
    error = await refused(limits, "k")
    assert (error.limit, error.retry_after_s) == ("requests", 30)


async def test_no_limits_admit_everything_and_remember_nothing() -> None:
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=None, clock=Clock())
    for i in range(1000):
        await limits.admit(f"k{i % 3}")
        await limits.record_tokens(f"k{i % 3}", 10**9)
    assert limits.tracked() == 0


async def test_a_request_limit_alone_ignores_tokens() -> None:
    limits = RateLimits(requests_per_minute=5, tokens_per_minute=None, clock=Clock())
    await limits.record_tokens("k", 10**9)
    await limits.admit("k")


async def test_idle_keys_are_forgotten() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=60, tokens_per_minute=6000, clock=clock)
    for i in range(10_000):
        await limits.admit(f"k{i}")
        await limits.record_tokens(f"k{i}", 100)
    assert limits.tracked() == 10_000
    clock.advance(1.01)  # one request and 100 tokens refill in a second
    await limits.admit("fresh")
    assert limits.tracked() == 1


async def test_a_key_far_over_its_tokens_does_not_keep_idle_keys_alive() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=60, tokens_per_minute=1000, clock=clock)
    await limits.admit("heavy")
    await limits.record_tokens("heavy", 1_000_000)  # over for about 16 hours
    for i in range(1000):
        await limits.admit(f"k{i}")
    clock.advance(61)
    await limits.admit("fresh")
    assert limits.tracked() == 2
    assert (await refused(limits, "heavy")).limit == "tokens"


async def test_the_number_of_keys_has_a_hard_cap() -> None:
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=None, clock=Clock(), max_keys=100)
    for i in range(1000):
        await limits.admit(f"k{i}")
    assert limits.tracked() == 100
    await refused(limits, "k999")  # the most recent keys are the ones kept
