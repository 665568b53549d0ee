"""Per-API-key rate limits: requests per minute and tokens per minute.

Each limit is a token bucket, as Anthropic describes its own: a key may use its whole
per-minute allowance at once, and the allowance refills continuously at that rate. A bucket is
stored as how far it is drained (`level`) and when that was measured, so checking and counting
are O(1); a key whose buckets have refilled completely is indistinguishable from a new key and
is forgotten, so memory is bounded by the keys still draining — those seen within the last
minute, or longer after a job far over the tokens per minute — with a hard cap as a backstop.

`RateLimiter` is what the dispatcher and the settler use. `RateLimits` here keeps the buckets
in this process's memory, for a single coordinator; `redis_limits.RedisRateLimits` keeps them
in Redis, shared by replicas, by the same rule (one contract test suite holds both to it).

It owns only the counting. It does not estimate a request's tokens in advance: tokens are
counted when a job settles (`record_tokens`), and a key is refused new requests while it is
over its tokens per minute.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from moonflower import errors

WINDOW_S = 60.0
SLACK = 1e-6
"""Float error forgiven in a bucket's level, so that waiting exactly the retry-after a refusal
named is always enough (and the retry-after is not a second longer for a rounding error)."""
MAX_KEYS = 100_000
"""Keys tracked at most; beyond this the least recently seen is forgotten (its limits reset)."""


class RateLimiter(Protocol):
    """Counts requests and tokens per API key against the per-minute limits."""

    @property
    def is_unlimited(self) -> bool:
        """No limit is set: `admit` never refuses and nothing is counted."""
        ...

    async def admit(self, key_id: str) -> None:
        """Count one request for `key_id`, or raise `errors.RateLimited` (counting nothing)
        if it would go over its requests per minute, or its tokens already exceed its tokens
        per minute; when both are over, the longer wait is named. Raises
        `errors.StoreUnavailable` if the counts cannot be reached in time."""
        ...

    async def record_tokens(self, key_id: str, tokens: int) -> None:
        """Count the prompt and completion tokens of a settled job against `key_id`. Raises
        `errors.StoreUnavailable` if the counts cannot be reached in time."""
        ...


@dataclass(slots=True)
class _Usage:
    requests: float
    """Requests drained from the bucket as of `at` (it refills at the per-minute rate)."""
    tokens: float
    at: float
    idle_at: float
    """When both buckets will be full again, i.e. when this key may be forgotten."""


class RateLimits:
    """The buckets in this process's memory (one coordinator); never unavailable."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _Usage] = OrderedDict()
        """Least recently seen first."""

    @property
    def is_unlimited(self) -> bool:
        return self._rpm is None and self._tpm is None

    async def admit(self, key_id: str) -> None:
        """See `RateLimiter.admit`; memory answers at once, without yielding."""
        if self.is_unlimited:
            return
        now = self._clock()
        usage = self._current(key_id, now)
        refusals: list[tuple[float, errors.RateLimit, int]] = []
        if self._rpm is not None:
            over = usage.requests + 1 - self._rpm
            if over > SLACK:
                refusals.append((_wait_s(over - SLACK, self._rpm), "requests", self._rpm))
        if self._tpm is not None:
            over = usage.tokens - self._tpm
            if over > SLACK:
                refusals.append((_wait_s(over - SLACK, self._tpm), "tokens", self._tpm))
        if refusals:
            wait_s, limit, per_minute = max(refusals)
            raise refusal(wait_s, limit, per_minute)
        if self._rpm is not None:
            usage.requests += 1
        self._store(key_id, usage, now)

    async def record_tokens(self, key_id: str, tokens: int) -> None:
        """See `RateLimiter.record_tokens`."""
        if self._tpm is None or tokens <= 0:
            return
        now = self._clock()
        usage = self._current(key_id, now)
        usage.tokens += tokens
        self._store(key_id, usage, now)

    def tracked(self) -> int:
        """How many keys are remembered (for tests and metrics)."""
        return len(self._keys)

    def _current(self, key_id: str, now: float) -> _Usage:
        """The key's buckets refilled up to `now`."""
        usage = self._keys.get(key_id)
        if usage is None:
            return _Usage(requests=0.0, tokens=0.0, at=now, idle_at=now)
        elapsed = max(0.0, now - usage.at)
        if self._rpm is not None:
            usage.requests = max(0.0, usage.requests - elapsed * self._rpm / WINDOW_S)
        if self._tpm is not None:
            usage.tokens = max(0.0, usage.tokens - elapsed * self._tpm / WINDOW_S)
        usage.at = now
        return usage

    def _store(self, key_id: str, usage: _Usage, now: float) -> None:
        refilled_in = 0.0
        if self._rpm is not None:
            refilled_in = _wait_s(usage.requests, self._rpm)
        if self._tpm is not None:
            refilled_in = max(refilled_in, _wait_s(usage.tokens, self._tpm))
        usage.idle_at = now + refilled_in
        self._keys[key_id] = usage
        self._keys.move_to_end(key_id)
        self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        """Drop fully refilled keys from the least recently seen end, then enforce the hard
        cap. Each key is dropped at most once per time it is stored and at most one key is
        moved per call, so this is amortized O(1)."""
        has_rotated = False
        while self._keys:
            key_id, usage = next(iter(self._keys.items()))
            if usage.idle_at <= now:
                del self._keys[key_id]
            elif not has_rotated:
                # A key drained far (one huge job's tokens) must not shield idle keys behind it.
                self._keys.move_to_end(key_id)
                has_rotated = True
            else:
                break
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)


def _wait_s(amount: float, per_minute: int) -> float:
    """Seconds for a bucket refilling at `per_minute` to regain `amount`."""
    return max(0.0, amount) * WINDOW_S / per_minute


def refusal(wait_s: float, limit: errors.RateLimit, per_minute: int) -> errors.RateLimited:
    """The error for a request refused by `limit` until `wait_s` from now: whole seconds,
    at least one, rounded up so that waiting that long is always enough."""
    return errors.RateLimited(
        retry_after_s=max(1, math.ceil(wait_s)), limit=limit, per_minute=per_minute
    )
