"""News every replica must hear: an API key was revoked, the prices changed, a model's line
of waiting requests formed or moved.

Owns the three events, how they travel and what a replica's caches do on hearing them: they
forget the key's cached caller (`CallerCache.forget`, by the key's SHA-256, never the key) or
read the prices again (`Pricing.forget`); a line is `turns`' to hear. A single coordinator
hands events to its own listeners (`MemoryBroadcast`); replicas send them over one Redis
pub/sub channel under the store's key prefix (`RedisBroadcast`), each replica subscribed
from start-up.

Pub/sub delivers only to whoever is subscribed when a message is sent, so a message can be
lost (Redis down, a subscriber reconnecting). The caches' expiry (`api_key_cache_s`,
`price_list_cache_s`) stays the bound then, and a subscriber that (re)subscribes forgets
everything its caches hold, since it may have missed something. Broadcasting never fails
what announced it: the change is already in the database, so a Redis that does not answer is
logged and left to the expiry. Knows nothing of HTTP or of how keys and prices are stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Protocol

import orjson
from redis.exceptions import RedisError

from moonflower import errors
from moonflower.coordinator.auth import CallerCache
from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.redis_store import TIMEOUT_S, RedisStore

log = logging.getLogger(__name__)

CHANNEL = "broadcast"
"""The pub/sub channel's name under the store's key prefix."""
LISTEN_S = 1.0
"""How long one wait for a message lasts before the subscriber looks again."""
QUIET_S = 3.0
"""After this long without a word from Redis the subscriber pings it; a Redis that still says
nothing within `TIMEOUT_S` of that has hung (a stopped process keeps its sockets open, so no
read ever fails), and the subscription is started again, as after a lost connection."""
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
"""A lost subscription is tried again after a wait that doubles up to this."""
MAX_MODEL_CHARS = 256
"""The longest model name a `line_moved` message may carry."""
_KEY_HASH = re.compile(r"[0-9a-f]{64}")


class Listener(Protocol):
    """What hears the events: a replica's caches."""

    def key_revoked(self, key_hash: str) -> None: ...
    def prices_changed(self) -> None: ...
    def line_moved(self, model: str) -> None:
        """Requests wait for `model` on some replica, and their line formed or moved
        (`turns`)."""
        ...

    def may_have_missed(self) -> None:
        """Events may have been lost: forget everything they could have been about."""
        ...


class Broadcast(Protocol):
    """Announces events to every replica's listeners, this one's included."""

    def subscribe(self, listener: Listener) -> None:
        """Deliver events to `listener` from now on (call within the running event loop)."""
        ...

    @property
    def is_subscribed(self) -> bool:
        """Whether events sent now reach this replica's listeners."""
        ...

    async def key_revoked(self, key_hash: str) -> None:
        """The key whose SHA-256 (hex) is `key_hash` was revoked."""
        ...

    async def prices_changed(self) -> None: ...
    async def line_moved(self, model: str) -> None: ...
    async def aclose(self) -> None: ...


class ReplicaCaches:
    """This replica's caches, as a `Listener`."""

    def __init__(self, callers: CallerCache, pricing: Pricing) -> None:
        self._callers = callers
        self._pricing = pricing

    def key_revoked(self, key_hash: str) -> None:
        self._callers.forget(key_hash)

    def prices_changed(self) -> None:
        self._pricing.forget()

    def line_moved(self, model: str) -> None:
        """Not about caches."""

    def may_have_missed(self) -> None:
        self._callers.forget_all()
        self._pricing.forget()


Event = tuple[str, str | None]
"""("key_revoked", the key's SHA-256 in hex), ("prices_changed", None) or ("line_moved",
the model's name)."""


def tell(listeners: list[Listener], event: Event) -> None:
    """Hand `event` to each listener."""
    match event:
        case ("key_revoked", str(key_hash)):
            for listener in listeners:
                listener.key_revoked(key_hash)
        case ("prices_changed", None):
            for listener in listeners:
                listener.prices_changed()
        case ("line_moved", str(model)):
            for listener in listeners:
                listener.line_moved(model)


class MemoryBroadcast:
    """One coordinator: events go straight to its own listeners."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def is_subscribed(self) -> bool:
        return True

    async def key_revoked(self, key_hash: str) -> None:
        tell(self._listeners, ("key_revoked", key_hash))

    async def prices_changed(self) -> None:
        tell(self._listeners, ("prices_changed", None))

    async def line_moved(self, model: str) -> None:
        tell(self._listeners, ("line_moved", model))

    async def aclose(self) -> None:
        self._listeners.clear()


class RedisBroadcast:
    """Replicas: events are published on one Redis channel, which a background task of each
    replica listens to, resubscribing by itself whenever the subscription is lost.

    An event is also handed to this replica's own listeners before it is published, so the
    replica that made the change sees it at once even when Redis is away."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        """Whoever built the store closes it."""
        self._channel = store.key(CHANNEL)
        """Listened to here; `publish` sends to it."""
        self._listeners: list[Listener] = []
        self._listening: asyncio.Task[None] | None = None
        self._is_subscribed = False
        self._origin = uuid.uuid4().hex
        """Names this replica's messages, which its listeners heard before sending them."""

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen())

    @property
    def is_subscribed(self) -> bool:
        return self._is_subscribed

    async def key_revoked(self, key_hash: str) -> None:
        await self._announce(("key_revoked", key_hash))

    async def prices_changed(self) -> None:
        await self._announce(("prices_changed", None))

    async def line_moved(self, model: str) -> None:
        await self._announce(("line_moved", model))

    async def aclose(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
            self._listening = None
        self._is_subscribed = False
        self._listeners.clear()

    async def _announce(self, event: Event) -> None:
        tell(self._listeners, event)
        try:
            await publish(self._store, event, origin=self._origin)
        except errors.StoreUnavailable:
            log.warning(
                "could not broadcast %s; other replicas' caches expire by themselves", event[0]
            )

    async def _listen(self) -> None:
        wait_s = RECONNECT_FIRST_S
        while True:
            try:
                await self._listen_once()
            except (RedisError, OSError, TimeoutError) as error:
                if self._is_subscribed:
                    log.warning("lost the broadcast subscription (%s)", type(error).__name__)
            except Exception:  # a background task: nobody else would see it (bytes that
                # are not UTF-8 fail decoding, say); subscribing again starts afresh
                log.exception("the broadcast subscription failed; subscribing again")
            # Soon after a subscription that worked; less and less often while Redis is away.
            wait_s = RECONNECT_FIRST_S if self._is_subscribed else min(2 * wait_s, RECONNECT_MAX_S)
            self._is_subscribed = False
            await asyncio.sleep(wait_s)

    async def _listen_once(self) -> None:
        """Subscribe and deliver messages until the subscription fails."""
        pubsub = self._store.pubsub()
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await pubsub.subscribe(self._channel)
            heard = time.monotonic()
            pinged: float | None = None
            while True:
                message = await pubsub.get_message(timeout=LISTEN_S)
                now = time.monotonic()
                if message is not None:
                    heard, pinged = now, None
                    self._deliver(message)
                elif pinged is not None and now - pinged > TIMEOUT_S:
                    raise TimeoutError("Redis did not answer the subscriber's ping")
                elif pinged is None and now - heard > QUIET_S:
                    pinged = now
                    async with asyncio.timeout(TIMEOUT_S):
                        await pubsub.ping()
        finally:
            await pubsub.aclose()

    def _deliver(self, message: dict[str, object]) -> None:
        if message.get("type") == "subscribe":
            # A first subscription, or one the client renewed after a lost connection:
            # whatever was sent in between is lost, so everything cached may be stale.
            if self._is_subscribed:
                log.info("broadcast subscription renewed; forgetting cached keys and prices")
            self._is_subscribed = True
            for listener in self._listeners:
                listener.may_have_missed()
        elif message.get("type") == "message":
            body = _body(message.get("data"))
            event = _event(body)
            if event is None:
                log.warning("ignored a broadcast message this coordinator does not know")
            elif body.get("origin") != self._origin:
                tell(self._listeners, event)


async def publish(store: RedisStore, event: Event, *, origin: str = "") -> None:
    """Send `event` to every replica subscribed through `store`'s Redis (also from outside a
    coordinator, as `moonflower keys revoke` does); `errors.StoreUnavailable` if Redis does
    not take it."""
    name, subject = event
    body = {"event": name, "origin": origin}
    if subject is not None:
        body["model" if name == "line_moved" else "key_hash"] = subject
    await store.publish(store.key(CHANNEL), orjson.dumps(body).decode())


def _body(data: object) -> dict[str, object]:
    """A message's data as JSON, or {} if it is not a JSON object."""
    try:
        body = orjson.loads(data) if isinstance(data, str | bytes) else None
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _event(body: dict[str, object]) -> Event | None:
    """The event a message's body announces, if it is well formed."""
    match body:
        case {"event": "key_revoked", "key_hash": str(key_hash)} if _KEY_HASH.fullmatch(key_hash):
            return ("key_revoked", key_hash)
        case {"event": "prices_changed"}:
            return ("prices_changed", None)
        case {"event": "line_moved", "model": str(model)} if 0 < len(model) <= MAX_MODEL_CHARS:
            return ("line_moved", model)
    return None
