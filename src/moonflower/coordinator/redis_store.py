"""The coordinator's connection to Redis, which its replicas share live state through.

Owns building the client from `settings.redis_url` with bounded waits, naming keys under one
prefix, and running Lua scripts, each call atomic and over within `timeout_s`; every way Redis
can fail (down, unreachable, too slow, refusing) becomes `errors.StoreUnavailable` here and
nowhere else, so routes answer 503 (529 on /v1/messages) with Retry-After instead of hanging.

It must never log the URL, which may carry a password. What the state means (rate limits,
cache broadcasts, …) belongs to the modules that use it (`redis_limits`, `broadcast`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from moonflower import errors

log = logging.getLogger(__name__)

TIMEOUT_S = 1.0
"""The longest one call may wait on Redis, connecting included; it sits on the path of every
request, so a Redis that is gone costs each request at most this before its 503."""
RETRY_AFTER_S = 1
"""What a caller turned away because Redis did not answer is told to wait."""
MAX_CONNECTIONS = 32
"""Connections one coordinator opens at most; more calls at once wait for one (within
`TIMEOUT_S`) rather than open more."""
KEY_PREFIX = "moonflower:"


class RedisStore:
    """A Redis client with the coordinator's bounds and key prefix. Built once (`connect`),
    shared by every part that keeps live state in Redis, closed at shutdown (`aclose`)."""

    def __init__(
        self, client: Redis, *, timeout_s: float = TIMEOUT_S, prefix: str = KEY_PREFIX
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._prefix = prefix

    @classmethod
    def connect(
        cls, url: str, *, timeout_s: float = TIMEOUT_S, prefix: str = KEY_PREFIX
    ) -> RedisStore:
        """A store for the server at `url`; nothing is sent until the first call."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry replaces a pooled connection that a Redis restart cut; the
            # overall bound in `run` still holds.
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        return cls(Redis(connection_pool=pool), timeout_s=timeout_s, prefix=prefix)

    def key(self, *parts: str) -> str:
        """The Redis key for `parts`, under this store's prefix."""
        return self._prefix + ":".join(parts)

    def script(self, source: str) -> AsyncScript:
        """A Lua script to `run` (sent once by hash, again in full after a Redis restart)."""
        return self._client.register_script(source)

    async def run(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> object:
        """Run `script` atomically and return its reply, or raise `errors.StoreUnavailable`
        if Redis does not answer it within the time-out."""
        try:
            async with asyncio.timeout(self._timeout_s):
                reply: object = await script(keys=list(keys), args=list(args))
                return reply
        except (RedisError, OSError, TimeoutError) as error:
            # The error's text names host and port at most, never the URL's password.
            log.warning("Redis did not answer: %s: %s", type(error).__name__, error)
            raise errors.StoreUnavailable(retry_after_s=RETRY_AFTER_S) from error

    async def publish(self, channel: str, message: str) -> None:
        """Send `message` to whoever listens on `channel` (a `key`) now, or raise
        `errors.StoreUnavailable` if Redis does not take it within the time-out."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.publish(channel, message)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("Redis did not answer: %s: %s", type(error).__name__, error)
            raise errors.StoreUnavailable(retry_after_s=RETRY_AFTER_S) from error

    def pubsub(self) -> PubSub:
        """A subscription of its own (one pooled connection, held until it is closed); its
        calls raise Redis's own errors, which the subscriber handles (`broadcast`)."""
        return self._client.pubsub()

    async def aclose(self) -> None:
        """Close every connection this store opened."""
        await self._client.aclose(close_connection_pool=True)
