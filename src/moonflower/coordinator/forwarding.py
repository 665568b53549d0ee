"""Handing an inference request to the replica whose provider can serve it.

A consumer may reach any replica, and a provider is connected to one. When the replica a
request reached has no free slot for its model and another one has (`presence`), or when the
request's turn in the model's line (`turns`) comes with another replica's slot, the request
goes there whole — same path, body and headers, marked as forwarded so it is never forwarded
again — and its answer, streamed or not, comes back byte for byte. The replica that serves it
authenticates, limits, holds, relays, settles and signs exactly as for a request of its own;
this one only carries bytes, so nothing is counted or charged twice, and a consumer that hangs
up here closes the forwarded request there, which cancels its job.

A replica that cannot be reached is avoided for a while and the request is served here
(queued, or refused as it would be without replicas). A sealed request reaches this replica's
routes opened (`sealed_transport`), is forwarded open, and its answer is sealed here again on
its way back: replicas must reach each other over a private network or `https` URLs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from moonflower.coordinator.presence import PUBLISH_EVERY_S, Presence
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.trust import TrustLevel
from moonflower.coordinator.turns import Turn, Turns

log = logging.getLogger(__name__)

FORWARDED_HEADER = "x-moonflower-forwarded-by"
"""Set on a forwarded request (the forwarding replica's id): it is served where it lands."""
CONNECT_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 512
KEEPALIVE_S = 2.0
"""Idle connections to other replicas are dropped sooner than uvicorn closes them (5 s), so
a request is rarely sent on a connection the other side is closing."""
MAX_ATTEMPTS = 3
"""Replicas tried in turn when the one offered cannot be reached (it died, say, and its
offers have not run out yet); also how many times presence is read, a publication apart,
for a model nothing serves here."""
_NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "origin",
    }
)
"""Request headers that describe the hop, not the request; and `origin`: the browser talks
to this replica, whose CORS middleware answers it."""
_NOT_RETURNED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "date", "server"}
)


class Forwarder:
    def __init__(
        self,
        presence: Presence,
        registry: Registry,
        turns: Turns,
        *,
        replica_id: str,
        aliases: Mapping[str, str],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._presence = presence
        self._registry = registry
        self._turns = turns
        self._replica_id = replica_id
        self._aliases = aliases
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_S,
            ),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def elsewhere(
        self, request: Request, model: str, floor: TrustLevel | None
    ) -> Response | None:
        """The answer of the replica that serves `request` for `model`, when it is not this
        one; None when this one should serve it: a slot is free here and nobody waits for
        one, the request was forwarded already, its turn in the model's line came with a
        slot here (`turns`), nothing serves the model anywhere (admission then says so), or
        the replica chosen could not be reached."""
        if FORWARDED_HEADER in request.headers:
            return None
        model = self._aliases.get(model, model)
        if not self._turns.has_line(model) and self._registry.has_free_slot_for(model, floor):
            return None
        level = max(floor or self._registry.default_floor, self._registry.default_floor)
        for _attempt in range(MAX_ATTEMPTS):
            offer = await self._where(model, level, floor)
            if offer is None:
                return None
            answer = await self._forward(request, offer)
            if answer is not None:
                return answer
        return None

    async def _where(self, model: str, level: TrustLevel, floor: TrustLevel | None) -> Turn | None:
        """The replica to serve a request that has no free slot here: another one with a
        free slot when nobody waits, else whichever its turn in the line gives; None for
        this replica."""
        if not self._turns.has_line(model):
            offer = await self._presence.elsewhere(model, level, need_free=True)
            if offer is not None:
                return Turn(offer.replica_id, offer.url)
        if not self._registry.serving(model, floor) and not await self._served_elsewhere(
            model, level
        ):
            return None
        return await self._turns.wait_turn(model, level)

    async def _served_elsewhere(self, model: str, level: TrustLevel) -> bool:
        """Whether another replica serves `model` at all; a provider that has just connected
        to one is offered within a publication, so look again before saying no."""
        for attempt in range(MAX_ATTEMPTS):
            if await self._presence.elsewhere(model, level, need_free=False) is not None:
                return True
            if attempt < MAX_ATTEMPTS - 1:
                await asyncio.sleep(PUBLISH_EVERY_S)
        return False

    async def _forward(self, request: Request, offer: Turn) -> Response | None:
        body: bytes = getattr(request.state, "body", b"")
        headers = [
            (name, value)
            for name, value in request.headers.raw
            if name.decode("latin-1").lower() not in _NOT_FORWARDED
        ]
        headers.append((FORWARDED_HEADER.encode(), self._replica_id.encode()))
        url = offer.url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        outgoing = self._client.build_request(request.method, url, headers=headers, content=body)
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError as error:
            # Not connecting at all means the replica is gone: skip it for a while. Anything
            # else (a pooled connection it closed meanwhile, say) only skips this attempt.
            log.warning(
                "replica %s could not be reached (%s)", offer.replica_id, type(error).__name__
            )
            if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
                self._presence.avoid(offer.replica_id)
            return None
        returned = {
            name: value
            for name, value in answer.headers.multi_items()
            if name.lower() not in _NOT_RETURNED
        }
        return StreamingResponse(_relay(answer), status_code=answer.status_code, headers=returned)


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The forwarded answer's bytes as they come; closing it (the consumer hung up, or it
    ended) closes the forwarded request."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    except httpx.HTTPError as error:
        # The serving replica went away mid-answer: the consumer's stream ends here, as it
        # would have if it had been connected there.
        log.warning("a forwarded answer was cut (%s)", type(error).__name__)
    finally:
        await answer.aclose()
