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


async def test_a_consumer_that_stops_reading_stops_the_engine(tmp_path: Path) -> None:
    # One token per event (the delay outlasts the provider's 20 ms batching).
    engine = ScriptedEngine(script=" ".join(["w"] * WORDS), token_delay_s=0.025)
    async with inprocess_network(tmp_path, [engine]) as net:
        caller = await authenticate(net.services.db, net.key)
        assert caller is not None
        request = GenerationRequest(model="fake-model", messages=(Message("user", "go"),))
        job = await net.services.dispatcher.start(request, caller)
        try:
            await asyncio.sleep(WORDS * 0.025 * 0.8)  # nobody reads
            # Unthrottled it would be at ~120 tokens; the window and the engine's lead stop it.
            stalled_at = engine.tokens_produced
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
