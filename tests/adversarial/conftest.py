"""Fixtures for adversarial tests: a real `moonflower coordinator serve` process on a real
database (SQLite, or a real PostgreSQL), enrolled provider accounts, funded consumers, direct
reads of the books, and a liveness probe served by a second, honest provider.

The attacker is `tests.support.scripted_provider.ScriptedProvider` (or a hostile HTTP
client); everything it talks to is the real thing. Per-test coordinator settings:

    @pytest.mark.coordinator_settings(RECEIPT_TIMEOUT_S="1", MIN_TRUST="none")
    async def test_x(coordinator, ...): ...

or `start_coordinator(database="sqlite"|"postgres", **settings)` for more than one.
Accounts and keys are made with the same ledger calls `moonflower accounts create --provider`,
`moonflower keys create` and `moonflower credit` make, in-process (a CLI run costs ~2 s);
`RunningCoordinator.cli(...)` runs the real CLI when a test wants it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from sqlalchemy import func, select

from moonflower.ledger import accounts, book, keys
from moonflower.ledger.accounts import AccountInfo
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.tables import Account, Hold, Job, LedgerEntry
from tests.support.cluster import redis_url_for_cluster
from tests.support.money import Prices
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, free_port, wait_until
from tests.support.redis import RedisServer
from tests.support.scripted_provider import ScriptedProvider

PRICES = Prices(input=1_000_000, output=2_000_000, minimum=0, fee_bps=1000)
"""In force on every test coordinator: a prompt token costs 1 µUSD, a completion token
2 µUSD, no minimum charge, the platform keeps 10 %. `PRICES.cost(p, c)`, `PRICES.fee(cost)`."""

TEST_SETTINGS: dict[str, str] = {
    "RECEIPT_TIMEOUT_S": "2",
    "FIRST_EVENT_TIMEOUT_S": "5",
    "FIRST_TOKEN_TIMEOUT_S": "5",
    "QUEUE_MAX_WAIT_S": "5",
    **PRICES.settings(),
}
"""`MOONFLOWER_*` settings (without the prefix) of every test coordinator; a test's own
settings override them."""

LIVE_MODEL = "live-check"
"""The model `assert_live`'s honest provider serves; attackers serve other models."""
CONSUMER_CREDIT_USD = "10"


# --- the coordinator -----------------------------------------------------------------------


@dataclass
class RunningCoordinator:
    """A real coordinator process and the database it runs on."""

    network: LocalNetwork
    database_url: str
    settings: dict[str, str]
    replica: LocalNetwork | None = None
    """A second replica on the same database and Redis, which consumers call: their
    requests are forwarded to `network`, where the providers connect."""

    @property
    def base_url(self) -> str:
        """Where providers connect."""
        return self.network.base_url

    @property
    def consumer_url(self) -> str:
        """Where consumers call."""
        return (self.replica or self.network).base_url

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    def log(self) -> str:
        assert self.network.coordinator is not None
        logs = [self.network.coordinator.log()]
        if self.replica is not None and self.replica.coordinator is not None:
            logs.append(self.replica.coordinator.log())
        return "\n".join(logs)

    def cli(self, *args: str) -> str:
        """`moonflower ARGS` against this coordinator's database; its standard output."""
        return self.network.cli(*args)

    def stop(self) -> None:
        for network in (self.replica, self.network):
            if network is not None and network.coordinator is not None:
                network.coordinator.stop()

    def restart(self, **settings: str) -> None:
        """Stop the process (and the replica) and start it again on the same port and
        database, with `settings` added to its environment."""
        self.stop()
        self.settings.update(settings)
        self.network.settings.update(settings)
        start_process(self.network)
        if self.replica is not None:
            self.replica.settings.update(settings)
            start_process(self.replica, "replica")

    async def health(self, timeout: float = 2.0) -> httpx.Response:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await client.get(f"{self.base_url}/health")


def start_process(network: LocalNetwork, name: str = "coordinator") -> None:
    """Start the network's coordinator and wait for `/health`, failing at once (with its
    log) if the process exits instead."""
    process = network.spawn(
        name, "coordinator", "serve", "--port", str(network.port), *network.db_args()
    )
    network.coordinator = process
    wait_until(
        lambda: not process.is_running or network.is_healthy(),
        STARTUP_TIMEOUT_S,
        "the coordinator to answer /health",
    )
    if not process.is_running:
        raise RuntimeError(f"the coordinator exited:\n{process.log()[-3000:]}")


StartCoordinator = Callable[..., RunningCoordinator]


@pytest.fixture
def start_coordinator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartCoordinator]:
    """A factory: `start_coordinator(database="sqlite"|"postgres", **settings)` starts a
    coordinator process (stopped after the test) with `TEST_SETTINGS` and `settings`."""
    started: list[LocalNetwork] = []

    def start(database: str = "sqlite", **settings: str) -> RunningCoordinator:
        """`database` "replicas": two replicas on PostgreSQL and Redis (`RunningCoordinator.
        replica`)."""
        root = tmp_path / f"coordinator-{len(started)}"
        url: str | None = None
        if database in ("postgres", "replicas"):
            url = request.getfixturevalue("postgres_server").create_database()
        elif database != "sqlite":
            raise ValueError(f"database is sqlite, postgres or replicas, not {database!r}")
        merged = {**TEST_SETTINGS, **settings}
        if database == "replicas":
            redis: RedisServer = request.getfixturevalue("redis_server")
            merged["REDIS_URL"] = redis_url_for_cluster(redis)
        network = LocalNetwork(root, database_url=url, log_level="info", settings=dict(merged))
        started.append(network)
        start_process(network)
        replica = None
        if database == "replicas":
            replica = LocalNetwork(
                root, database_url=url, port=free_port(), log_level="info", settings=dict(merged)
            )
            started.append(replica)
            start_process(replica, "replica")
        return RunningCoordinator(
            network, url or default_database_url(network.data_dir), dict(merged), replica
        )

    try:
        yield start
    finally:
        for network in started:
            network.stop()


ONE_OR_TWO_REPLICAS = [
    "sqlite",
    pytest.param("replicas", marks=[pytest.mark.postgres, pytest.mark.redis]),
]
"""Parameters of a module's own `coordinator` fixture whose attacks must also hold against
two replicas (see `one_or_two_replicas`)."""


def one_or_two_replicas(
    request: pytest.FixtureRequest, start_coordinator: StartCoordinator
) -> RunningCoordinator:
    """For a module's `coordinator` fixture parametrized with `ONE_OR_TWO_REPLICAS`: one
    coordinator on SQLite, then two replicas on PostgreSQL and Redis with the attacker's
    provider on one and the consumers on the other."""
    return start_coordinator(request.param, **_settings_for(request))


def _settings_for(request: pytest.FixtureRequest) -> dict[str, str]:
    settings: dict[str, str] = {}
    for marker in reversed(list(request.node.iter_markers("coordinator_settings"))):
        settings.update({name: str(value) for name, value in marker.kwargs.items()})
    param = getattr(request, "param", None)
    if isinstance(param, dict):
        settings.update({name: str(value) for name, value in param.items()})
    return settings


@pytest.fixture
def coordinator(
    request: pytest.FixtureRequest, start_coordinator: StartCoordinator
) -> RunningCoordinator:
    """A real coordinator on SQLite (settings: the `coordinator_settings` marker, or an
    indirect parameter dict)."""
    return start_coordinator("sqlite", **_settings_for(request))


@pytest.fixture
def pg_coordinator(
    request: pytest.FixtureRequest, start_coordinator: StartCoordinator
) -> RunningCoordinator:
    """The same on a real PostgreSQL (tests using it are marked `postgres`)."""
    return start_coordinator("postgres", **_settings_for(request))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("replicas", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def each_coordinator(
    request: pytest.FixtureRequest, start_coordinator: StartCoordinator
) -> RunningCoordinator:
    """A real coordinator, once on SQLite, once on PostgreSQL, and once as two replicas on
    PostgreSQL and Redis with the providers on one and the consumers on the other."""
    return start_coordinator(request.param, **_settings_for(request))


@pytest.fixture
def running(request: pytest.FixtureRequest) -> RunningCoordinator:
    """The coordinator this test asked for (`pg_coordinator`, `each_coordinator` or
    `coordinator`): the one `books`, `consumer`, `provider_token` and `assert_live` use."""
    for name in ("pg_coordinator", "each_coordinator", "coordinator"):
        if name in request.fixturenames:
            coordinator: RunningCoordinator = request.getfixturevalue(name)
            return coordinator
    coordinator = request.getfixturevalue("coordinator")
    return coordinator


# --- the books -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldRow:
    job_id: str
    account: str
    amount_micro_usd: int
    status: str


@dataclass
class Books:
    """The coordinator's ledger, read (and for set-up, written) directly in its database."""

    db: Database

    async def account(self, name: str) -> AccountInfo:
        found = await accounts.find_account(self.db, name)
        if found is None:
            raise LookupError(f"no account {name!r}")
        return found

    async def balance(self, name: str) -> int:
        return (await self.account(name)).balance_micro_usd

    async def held(self, name: str) -> int:
        return (await self.account(name)).held_micro_usd

    async def balances(self) -> dict[str, int]:
        return {a.name: a.balance_micro_usd for a in await accounts.list_accounts(self.db)}

    async def total(self) -> int:
        """The sum over every ledger entry: 0 in balanced books."""
        async with self.db.sessions() as session:
            total = await session.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount_micro_usd), 0))
            )
        return int(total or 0)

    async def holds(self, status: str | None = None) -> list[HoldRow]:
        query = select(Hold, Account.name).join(Account, Account.id == Hold.account_id)
        if status is not None:
            query = query.where(Hold.status == status)
        async with self.db.sessions() as session:
            rows = (await session.execute(query.order_by(Hold.created_at))).all()
        return [HoldRow(h.job_id, name, h.amount_micro_usd, h.status) for h, name in rows]

    async def open_holds(self) -> list[HoldRow]:
        return await self.holds("held")

    async def jobs(self) -> list[Job]:
        async with self.db.sessions() as session:
            return list((await session.scalars(select(Job).order_by(Job.created_at))).all())

    async def assert_balanced(self) -> None:
        """Every entry sums to zero, each account's balance is the sum of its entries, and
        no account but `external` is below zero or below what it holds."""
        assert await self.total() == 0
        async with self.db.sessions() as session:
            sums = dict(
                (
                    await session.execute(
                        select(
                            LedgerEntry.account_id, func.sum(LedgerEntry.amount_micro_usd)
                        ).group_by(LedgerEntry.account_id)
                    )
                ).all()
            )
        for info in await accounts.list_accounts(self.db):
            assert info.balance_micro_usd == int(sums.get(info.id, 0)), info
            if info.kind != "external":
                assert 0 <= info.held_micro_usd <= info.balance_micro_usd, info

    async def wait_settled(self, timeout: float = 15.0) -> None:
        """Wait until no hold is open (every job settled or released)."""
        deadline = time.monotonic() + timeout
        while await self.open_holds():
            if time.monotonic() > deadline:
                raise TimeoutError(f"holds still open after {timeout}s: {await self.open_holds()}")
            await asyncio.sleep(0.05)

    async def enroll_provider(self, name: str) -> str:
        """What `moonflower accounts create NAME --provider` does: a provider account and
        its first provider token (returned)."""
        await accounts.create_account(self.db, name, "provider")
        return (await keys.create_key(self.db, account_name=name, purpose="provider")).key

    async def new_api_key(self, account: str, credit_usd: str | None = CONSUMER_CREDIT_USD) -> str:
        """What `moonflower keys create --account A` and `moonflower credit A USD` do."""
        created = await keys.create_key(self.db, account_name=account)
        if credit_usd is not None:
            from moonflower.cli.accounts import parse_usd

            await book.deposit(self.db, created.account_id, parse_usd(credit_usd))
        return created.key


@pytest.fixture
async def books(running: RunningCoordinator) -> AsyncIterator[Books]:
    async with await Database.open(running.database_url) as db:
        yield Books(db)


# --- providers and consumers -----------------------------------------------------------------


class EnrolledProvider(NamedTuple):
    name: str
    token: str


@pytest.fixture
def provider_token(books: Books) -> Callable[[str], Awaitable[EnrolledProvider]]:
    """`await provider_token(name)`: a new enrolled provider account NAME and its token."""

    async def enroll(name: str) -> EnrolledProvider:
        return EnrolledProvider(name, await books.enroll_provider(name))

    return enroll


@dataclass
class Consumer:
    """A funded API key and an HTTP client that sends it."""

    name: str
    key: str
    client: httpx.AsyncClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def chat(
        self, content: str = "Hello", *, model: str = "scripted", **body: Any
    ) -> httpx.Response:
        """A whole (non-streaming) chat completion."""
        payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
        return await self.client.post("/v1/chat/completions", json=payload)


@dataclass
class Consumers:
    running: RunningCoordinator
    books: Books
    stack: AsyncExitStack
    made: list[Consumer] = field(default_factory=list)

    async def new(self, name: str | None = None, credit_usd: str = CONSUMER_CREDIT_USD) -> Consumer:
        name = name or f"consumer-{uuid.uuid4().hex[:8]}"
        key = await self.books.new_api_key(name, credit_usd)
        client = await self.stack.enter_async_context(
            httpx.AsyncClient(
                base_url=self.running.consumer_url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=httpx.Timeout(30, connect=5),
            )
        )
        consumer = Consumer(name, key, client)
        self.made.append(consumer)
        return consumer


@pytest.fixture
async def new_consumer(
    running: RunningCoordinator, books: Books
) -> AsyncIterator[Callable[..., Awaitable[Consumer]]]:
    """`await new_consumer(name=None, credit_usd="10")`: another funded consumer."""
    async with AsyncExitStack() as stack:
        yield Consumers(running, books, stack).new


@pytest.fixture
async def consumer(new_consumer: Callable[..., Awaitable[Consumer]]) -> Consumer:
    """The consumer `consumer`, with $10."""
    return await new_consumer("consumer")


# --- liveness --------------------------------------------------------------------------------


@dataclass
class Liveness:
    running: RunningCoordinator
    provider: ScriptedProvider
    consumer: Consumer
    checks: int = 0

    async def __call__(self, *, health_within_s: float = 2.0, timeout: float = 15.0) -> None:
        """`/health` answers within `health_within_s`, and a normal chat completion served
        by a second, honest provider succeeds."""
        began = time.monotonic()
        health = await self.running.health(timeout=health_within_s)
        assert health.status_code == 200
        assert time.monotonic() - began <= health_within_s
        self.checks += 1
        words = ["live", f" {self.checks}"]

        async def serve() -> None:
            job = await self.provider.next_job(timeout)
            await job.serve_honestly(words)

        async with asyncio.timeout(timeout):
            response, _ = await asyncio.gather(
                self.consumer.chat("are you there?", model=LIVE_MODEL), serve()
            )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "".join(words)


@pytest.fixture
async def assert_live(
    running: RunningCoordinator,
    books: Books,
    new_consumer: Callable[..., Awaitable[Consumer]],
) -> AsyncIterator[Liveness]:
    """`await assert_live()`: the coordinator still serves others (see `Liveness`). Its
    honest provider (account `live-provider`, model `LIVE_MODEL`) and consumer
    (`live-consumer`) are connected before the test begins."""
    token = await books.enroll_provider("live-provider")
    checker = await new_consumer("live-consumer")
    async with ScriptedProvider.connect(running.base_url, token=token, model=LIVE_MODEL) as honest:
        await honest.wait_routable(running.base_url)
        yield Liveness(running, honest, checker)


# --- markers -------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "coordinator_settings(**settings): MOONFLOWER_* settings (without the prefix) of the "
        "test's coordinator fixture",
    )


_PROCESS_FIXTURES = {
    "coordinator",
    "pg_coordinator",
    "each_coordinator",
    "start_coordinator",
    "running",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.path)).parents:
            continue
        names = set(getattr(item, "fixturenames", ()))
        if names & _PROCESS_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if "pg_coordinator" in names:
            item.add_marker(pytest.mark.postgres)
