"""Graceful restarts of the coordinator: on SIGTERM (or Ctrl-C) stop accepting, let the
requests in flight finish up to a deadline, then shut down; a second signal stops at once.

Owns only the order of those steps. Uvicorn-specific: `DrainingServer` closes the listening
sockets itself and tells uvicorn to exit once the dispatcher has no live jobs. Provider
connections stay open meanwhile, so their in-flight jobs can finish; they reconnect to the
next coordinator by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains instead of cutting connections."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: no more waiting
            if sig == signal.SIGTERM:
                self.force_exit = True
            return
        self._loop.call_soon_threadsafe(self.start_draining)

    def start_draining(self) -> None:
        """Stop accepting connections; exit once in-flight work is done (or its deadline)."""
        if self._draining is not None:
            return
        log.info("draining: no new connections; waiting for requests in flight")
        for server in self.servers:
            server.close()
        self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("draining failed; shutting down anyway")
        finally:
            self.should_exit = True
