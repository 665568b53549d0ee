"""A provider that stops sending frames is dropped once it has been silent for
`heartbeat_timeout_s` (and not before); one that keeps beating stays, however long."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.inprocess import inprocess_network
from tests.support.simulated_providers import FleetCounters, SimulatedProvider

SILENCE_S = 0.8


def connected_ids(registry: object) -> set[str]:
    return {session.id for session in registry}  # type: ignore[attr-defined]


async def test_a_silent_provider_is_dropped_and_a_beating_one_stays(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [], heartbeat_timeout_s=SILENCE_S) as net:
        url = net.base_url.replace("http://", "ws://") + "/ws/provider"
        counters = FleetCounters()
        beating = SimulatedProvider(url, "m", 1, counters, token=await net.enroll())
        silent = SimulatedProvider(url, "m", 1, counters, token=await net.enroll())
        await beating.connect()
        await silent.connect()
        serving = asyncio.create_task(beating.serve(heartbeat_interval_s=0.1))
        try:
            registry = net.services.registry
            assert connected_ids(registry) == {beating.provider_id, silent.provider_id}
            await asyncio.sleep(SILENCE_S * 0.7)
            assert silent.provider_id in connected_ids(registry)  # not before its time
            assert silent._socket is not None
            async with asyncio.timeout(SILENCE_S * 2):
                with pytest.raises(ConnectionClosed) as closed:
                    await silent._socket.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
            assert connected_ids(registry) == {beating.provider_id}
            await asyncio.sleep(SILENCE_S * 2)
            assert connected_ids(registry) == {beating.provider_id}
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await beating.close()
