"""Coordinator replicas as real processes on loopback: one PostgreSQL database, one Redis
database, one data directory (so one sealed-transport key), each replica on its own port.

Each cluster takes a Redis database number of its own, so clusters of different tests never
see each other's live state on the session's one Redis server.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_client

from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, Process, free_port, wait_until
from tests.support.redis import RedisServer

_REDIS_DATABASES = itertools.cycle(range(8, 16))
"""Redis databases 8 to 15 go to clusters, in turn; the lower ones to tests' own keys."""


def redis_url_for_cluster(redis: RedisServer) -> str:
    """The URL of a Redis database of the cluster's own, emptied first. Databases are taken
    in turn, so eight clusters may be alive at once: far more than a test module keeps."""
    database = next(_REDIS_DATABASES)
    client = redis_client.Redis(host=redis.host, port=redis.port, db=database)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis.url(database)


@dataclass
class Cluster:
    root: Path
    database_url: str
    redis_url: str
    settings: dict[str, str] = field(default_factory=dict)
    replicas: list[LocalNetwork] = field(default_factory=list)

    @classmethod
    def on(cls, root: Path, database_url: str, redis: RedisServer, **settings: str) -> Cluster:
        return cls(root, database_url, redis_url_for_cluster(redis), settings)

    def replica(self, index: int) -> LocalNetwork:
        return self.replicas[index]

    def start_replicas(self, count: int) -> list[LocalNetwork]:
        """Start `count` more replicas at once and wait until each answers."""
        started = []
        for _ in range(count):
            replica = LocalNetwork(
                self.root,
                database_url=self.database_url,
                port=free_port(),
                log_level="info",
                settings={"REDIS_URL": self.redis_url, **self.settings},
            )
            self.replicas.append(replica)
            self.spawn(replica)
            started.append(replica)
        for replica in started:
            wait_healthy(replica)
        return started

    def spawn(self, replica: LocalNetwork) -> Process:
        name = f"coordinator-{self.replicas.index(replica)}"
        replica.coordinator = replica.spawn(
            name, "coordinator", "serve", "--port", str(replica.port), *replica.db_args()
        )
        return replica.coordinator

    @property
    def operator(self) -> LocalNetwork:
        """Runs the CLI against the cluster's ledger (no process of its own)."""
        return LocalNetwork(self.root, database_url=self.database_url)

    def create_key(self, account: str = "default", *, credit_usd: str | None = "100") -> str:
        return self.operator.create_key(account, credit_usd=credit_usd)

    def stop(self) -> None:
        for replica in reversed(self.replicas):
            replica.stop()

    def logs(self) -> str:
        return "\n".join(replica.logs() for replica in self.replicas)


def wait_healthy(net: LocalNetwork) -> None:
    process = net.coordinator
    assert process is not None
    wait_until(
        lambda: net.is_healthy() or not process.is_running,
        STARTUP_TIMEOUT_S,
        f"{process.name} to answer /health",
    )
    assert process.is_running, process.log()[-3000:]
