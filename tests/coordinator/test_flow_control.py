"""Backpressure: a consumer that stops reading stops its provider's engine (within a bounded
window of events), and nothing is lost when it reads again. Fake engine, in-process network:
this is about the flow of events, not about inference."""

from __future__ import annotations

import asyncio
from pathlib import Path

from moonflower import wire
from moonflower.generation import Finished, GenerationRequest, Message, TextDelta
from moonflower.ledger.keys import authenticate
from moonflower.provider.flow import ENGINE_AHEAD_EVENTS
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network

WORDS = 150


async def quiet(engine: ScriptedEngine, *, at_least: int, for_s: float = 0.3) -> int:
    """The engine's token count once it reached `at_least` and then stood still for
    `for_s` (at most 10 s in all)."""
    async with asyncio.timeout(10):
        while engine.tokens_produced < at_least:
            await asyncio.sleep(0.01)
        while True:
            seen = engine.tokens_produced
            await asyncio.sleep(for_s)
            if engine.tokens_produced == seen:
                return seen


async def test_a_consumer_that_stops_reading_stops_the_engine(tmp_path: Path) -> None:
    # One token per event (the delay outlasts the provider's 20 ms batching).
    engine = ScriptedEngine(script=" ".join(["w"] * WORDS), token_delay_s=0.025)
    async with inprocess_network(tmp_path, [engine]) as net:
        caller = await authenticate(net.services.db, net.key)
        assert caller is not None
        request = GenerationRequest(model="fake-model", messages=(Message("user", "go"),))
        job = await net.services.dispatcher.start(request, caller)
        try:
            # Nobody reads. Unthrottled the engine would run to the end; the window and the
            # engine's lead stop it.
            stalled_at = await quiet(engine, at_least=wire.FLOW_WINDOW_EVENTS - 2)
            limit = wire.FLOW_WINDOW_EVENTS + ENGINE_AHEAD_EVENTS + 3
            assert wire.FLOW_WINDOW_EVENTS - 2 <= stalled_at <= limit
            await asyncio.sleep(0.5)
            assert engine.tokens_produced == stalled_at  # stopped, not just slow
            text: list[str] = []
            ending = None
            async for event in job.events():
                if isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, Finished):
                    ending = event
        finally:
            await job.close()
    assert ending is not None
    assert ending.reason == "stop"
    assert "".join(text).split() == ["w"] * WORDS  # nothing lost
