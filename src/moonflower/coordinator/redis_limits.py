"""Per-API-key rate limits kept in Redis, so every coordinator replica draws on one budget.

The rule is `limits.RateLimits`'s token bucket, written once more in Lua: each `admit` or
`record_tokens` is one script that refills the key's buckets, checks or counts, and writes
them back atomically, with the time taken from Redis (`TIME`), so replicas whose clocks differ
still agree. A key's hash expires when both its buckets have refilled (a full bucket is the
same as no key), so Redis holds only the keys still draining.

Every replica must be given the same limits: each checks against its own settings. A Redis
that does not answer in time makes a call raise `errors.StoreUnavailable` (`redis_store`).
"""

from __future__ import annotations

from moonflower import errors
from moonflower.coordinator.limits import SLACK, WINDOW_S, refusal
from moonflower.coordinator.redis_store import RedisStore

_BUCKETS_LUA = """
-- KEYS[1]: one API key's buckets, a hash: r and t, requests and tokens drained as of at.
-- ARGV: "admit" or "record", requests and tokens per minute (0: no limit), tokens to record,
-- the window in seconds, the float error forgiven. Replies {} when counted, or when refused
-- {limit, seconds to wait, per minute}, counting nothing.
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local amount, window, slack = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'r', 't', 'at')
local requests, tokens = tonumber(state[1]) or 0, tonumber(state[2]) or 0
local elapsed = math.max(0, now - (tonumber(state[3]) or now))
if rpm > 0 then requests = math.max(0, requests - elapsed * rpm / window) end
if tpm > 0 then tokens = math.max(0, tokens - elapsed * tpm / window) end

local function wait_s(level, per_minute)
  return math.max(0, level) * window / per_minute
end

if ARGV[1] == 'admit' then
  local refused = nil
  if rpm > 0 and requests + 1 - rpm > slack then
    refused = {'requests', wait_s(requests + 1 - rpm - slack, rpm), rpm}
  end
  if tpm > 0 and tokens - tpm > slack then
    local wait = wait_s(tokens - tpm - slack, tpm)
    if refused == nil or wait >= refused[2] then refused = {'tokens', wait, tpm} end
  end
  if refused ~= nil then
    return {refused[1], string.format('%.17g', refused[2]), refused[3]}
  end
  if rpm > 0 then requests = requests + 1 end
else
  tokens = tokens + amount
end

local refilled_in = 0
if rpm > 0 then refilled_in = wait_s(requests, rpm) end
if tpm > 0 then refilled_in = math.max(refilled_in, wait_s(tokens, tpm)) end
local expire_ms = math.ceil(refilled_in * 1000)
if expire_ms <= 0 then
  redis.call('DEL', KEYS[1])
  return {}
end
-- %.17g: Lua's own conversion keeps 14 digits, too few for a Unix time in microseconds.
redis.call('HSET', KEYS[1], 'r', string.format('%.17g', requests),
  't', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], expire_ms)
return {}
"""


class RedisRateLimits:
    """`limits.RateLimiter` with the buckets in Redis, shared by every replica using `store`."""

    def __init__(
        self,
        store: RedisStore,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
    ) -> None:
        self._store = store
        """Where the buckets are; whoever built the store closes it."""
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._script = store.script(_BUCKETS_LUA)

    @property
    def is_unlimited(self) -> bool:
        return self._rpm is None and self._tpm is None

    async def admit(self, key_id: str) -> None:
        """See `limits.RateLimiter.admit`."""
        if self.is_unlimited:
            return
        reply = await self._run("admit", key_id, 0)
        match reply:
            case []:
                return
            case ["requests" | "tokens" as limit, str(wait_s), int(per_minute)]:
                kind: errors.RateLimit = "requests" if limit == "requests" else "tokens"
                raise refusal(float(wait_s), kind, per_minute)
        raise RuntimeError(f"the rate limit script replied {reply!r}")

    async def record_tokens(self, key_id: str, tokens: int) -> None:
        """See `limits.RateLimiter.record_tokens`."""
        if self._tpm is None or tokens <= 0:
            return
        await self._run("record", key_id, tokens)

    async def _run(self, operation: str, key_id: str, tokens: int) -> object:
        arguments = (operation, self._rpm or 0, self._tpm or 0, tokens, WINDOW_S, SLACK)
        key = self._store.key("ratelimit", key_id)
        return await self._store.run(self._script, [key], arguments)
