"""A provider may be given several coordinator URLs: comma-separated in the environment or
repeated on the command line, one URL meaning exactly what it always did; the agent tries
them in turn and goes straight on to the next when one cannot be reached."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from unittest import mock

import pytest
from pydantic import SecretStr, ValidationError

from moonflower.crypto.signing import SoftwareSigner
from moonflower.provider.agent import ProviderAgent
from moonflower.settings import ProviderSettings
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import HARDWARE, inprocess_network
from tests.support.network import free_port


def test_one_url_is_a_list_of_one() -> None:
    assert ProviderSettings(coordinator="http://10.0.0.1:8000").coordinator == [
        "http://10.0.0.1:8000"
    ]
    assert ProviderSettings().coordinator == ["http://127.0.0.1:8000"]


def test_the_environment_takes_a_comma_separated_list() -> None:
    given = {"MOONFLOWER_PROVIDER_COORDINATOR": " http://a:8000, http://b:8000 ,"}
    with mock.patch.dict(os.environ, given):
        assert ProviderSettings().coordinator == ["http://a:8000", "http://b:8000"]


def test_repeated_flags_are_kept_in_order_without_duplicates() -> None:
    given = ["http://b:8000", "http://a:8000,http://b:8000"]
    assert ProviderSettings(coordinator=given).coordinator == ["http://b:8000", "http://a:8000"]


def test_no_url_at_all_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least one coordinator URL"):
        ProviderSettings(coordinator=" , ")


def test_the_agent_speaks_to_each_url_on_its_websocket() -> None:
    settings = ProviderSettings(coordinator="https://lb.example/base,http://10.0.0.2:8000")
    agent = ProviderAgent(settings, ScriptedEngine(), HARDWARE, SoftwareSigner.generate())
    assert agent.urls == ("wss://lb.example/base/ws/provider", "ws://10.0.0.2:8000/ws/provider")


async def test_an_unreachable_first_url_is_passed_over_without_waiting(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, []) as net:
        settings = ProviderSettings(
            coordinator=[f"http://127.0.0.1:{free_port()}", net.base_url],  # nothing on the first
            token=SecretStr(await net.enroll()),
            backoff_initial_s=60,  # a wait between the two would outlast the timeout below
        )
        agent = ProviderAgent(settings, ScriptedEngine(), HARDWARE, SoftwareSigner.generate())
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(10):
                await agent.is_connected.wait()
            assert agent.provider_id is not None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
