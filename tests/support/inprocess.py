"""A coordinator and providers in the test's own event loop, on a real loopback socket.

The coordinator is the real app served by uvicorn; providers are real `ProviderAgent`s
speaking the real wire protocol — only their engines are scripted. Used for routing,
cancellation and failure tests that need to be fast. Each provider is enrolled as a real one
is: it presents a provider token of its own provider account (`enroll`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from moonflower import wire
from moonflower.cli.coordinator import uvicorn_server
from moonflower.coordinator.app import create_app
from moonflower.coordinator.assembly import build_services
from moonflower.coordinator.services import Services
from moonflower.crypto.signing import SoftwareSigner
from moonflower.ledger import keys
from moonflower.ledger.book import deposit
from moonflower.provider.agent import ProviderAgent
from moonflower.settings import CoordinatorSettings, ProviderSettings
from tests.support.fake_engine import ScriptedEngine
from tests.support.network import free_port

HARDWARE = wire.Hardware(cpu="test cpu", cpu_cores=1, memory_bytes=1 << 30, os="test")


@dataclass
class InProcessNetwork:
    base_url: str
    key: str
    services: Services
    agents: list[ProviderAgent]
    agent_tasks: list[asyncio.Task[None]]
    _account_numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def enroll(self, account: str | None = None) -> str:
        """A new provider token for `account` (by default a new provider account of its own,
        so one provider's verdict never touches another's)."""
        name = account or f"provider-{next(self._account_numbers)}"
        created = await keys.create_key(self.services.db, account_name=name, purpose="provider")
        return created.key

    def add_provider(self, engine: ScriptedEngine, token: str | None) -> ProviderAgent:
        """Start a provider agent presenting `token` (None: none, as an anonymous one)."""
        settings = ProviderSettings(
            coordinator=self.base_url,
            token=None if token is None else SecretStr(token),
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        )
        agent = ProviderAgent(settings, engine, HARDWARE, SoftwareSigner.generate())
        self.agents.append(agent)
        self.agent_tasks.append(asyncio.create_task(agent.run()))
        return agent

    async def wait_routable(self, count: int) -> None:
        """Wait until `count` providers have passed their first challenge."""
        async with asyncio.timeout(10):
            while self.services.registry.routable_count() < count:
                await asyncio.sleep(0.01)

    async def stop_provider(self, agent: ProviderAgent) -> None:
        task = self.agent_tasks[self.agents.index(agent)]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


STARTING_CREDIT_MICRO_USD = 100_000_000
"""$100 on the network's key: far more than any test here spends."""


@asynccontextmanager
async def inprocess_network(
    tmp_path: Path, engines: list[ScriptedEngine], **settings_overrides: object
) -> AsyncIterator[InProcessNetwork]:
    settings = CoordinatorSettings(
        port=free_port(),
        data_dir=tmp_path,
        **settings_overrides,  # type: ignore[arg-type]
    )
    services = await build_services(settings)
    server = uvicorn_server(settings, create_app(settings, services))
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    created = await keys.create_key(services.db)
    await deposit(services.db, created.account_id, STARTING_CREDIT_MICRO_USD)
    key = created.key
    network = InProcessNetwork(f"http://127.0.0.1:{settings.port}", key, services, [], [])
    try:
        for engine in engines:
            agent = network.add_provider(engine, await network.enroll())
            async with asyncio.timeout(10):
                await agent.is_connected.wait()
        await network.wait_routable(len(engines))
        yield network
    finally:
        for task in network.agent_tasks:
            task.cancel()
        await asyncio.gather(*network.agent_tasks, return_exceptions=True)
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
        await services.close()
