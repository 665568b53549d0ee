"""Scale: a real coordinator process with many providers connected and many consumers
streaming at once.

The coordinator runs as its own process (`LocalNetwork`) with `MOONFLOWER_MIN_TRUST=none` and
`MOONFLOWER_ALLOW_ANONYMOUS_PROVIDERS=true`; the providers are
`tests.support.simulated_providers` — real WebSocket clients speaking the real protocol, all
in this process, with no model, no provider token and no attestation (trust `none`). Once
they are all registered, `--clients` concurrent consumers each stream `--requests` chat
completions with httpx. Reported: failed requests (must be 0), the coordinator's own pick
timings from `GET /health`, client-side latency, the coordinator's CPU time per request,
and its resident memory before and after the providers connect; printed and written to
`benchmarks/results/scale.json`. Usage:

    .venv/bin/python -m benchmarks.scale [--providers 1000] [--clients 100] [--requests 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.results import Run
from moonflower import wire
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, free_port, wait_until
from tests.support.postgres import running_postgres
from tests.support.redis import running_redis
from tests.support.simulated_providers import WORDS, FleetCounters, simulated_fleet

MODEL = "simulated"
OPEN_TO_SIMULATED = {"MIN_TRUST": "none", "ALLOW_ANONYMOUS_PROVIDERS": "true"}
"""Coordinator settings that admit and route to providers without a token or attestation."""
EXPECTED_TEXT = "".join(WORDS)
REQUEST_TIMEOUT_S = 60.0


@dataclass
class ScaleResult:
    providers: int
    clients: int
    requests: int
    replicas: int = 1
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    connect_s: float = 0.0
    """From the first provider connecting until the coordinator listed them all."""
    load_s: float = 0.0
    requests_per_s: float = 0.0
    client_p50_ms: float = 0.0
    client_p99_ms: float = 0.0
    coordinator_cpu_ms_per_request: float = 0.0
    """The coordinator process's CPU time (user + system) during the load, per request."""
    routing: dict[str, Any] = field(default_factory=dict)
    rss_before_kib: int = 0
    rss_with_providers_kib: int = 0
    rss_after_load_kib: int = 0
    kib_per_provider: float = 0.0
    fleet: dict[str, int] = field(default_factory=dict)


def start_network(root: Path) -> LocalNetwork:
    """A coordinator that admits and routes to providers without a token or attestation
    (what simulated providers are), logging warnings only, so a thousand connections do not
    flood its log."""
    network = LocalNetwork(root, log_level="warning", settings=OPEN_TO_SIMULATED)
    network.start_coordinator()
    return network


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid`, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU time of process `pid` so far, from /proc (Linux)."""
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0


async def stream_chat(client: httpx.AsyncClient, n: int) -> str | None:
    """One streaming chat completion; None if it arrived whole, else what went wrong."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {n}: say hello."}],
        "stream": True,
        "max_tokens": 16,
    }
    text: list[str] = []
    is_done = False
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                is_done = True
                continue
            chunk = orjson.loads(line[6:])
            if "error" in chunk:
                return f"error event: {chunk['error']}"
            for choice in chunk.get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    if not is_done:
        return "stream ended without [DONE]"
    if "".join(text) != EXPECTED_TEXT:
        return f"unexpected text {''.join(text)!r}"
    return None


async def run_clients(
    base_urls: list[str], key: str, clients: int, requests: int
) -> tuple[list[str], list[float], float]:
    """`clients` consumers at once, consumer c calling `base_urls[c % len(base_urls)]`,
    each making `requests` streaming requests in turn: the errors, each request's latency
    (ms) and the wall time (s)."""
    errors: list[str] = []
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base_url,
                    headers={"Authorization": f"Bearer {key}"},
                    limits=limits,
                    timeout=REQUEST_TIMEOUT_S,
                )
            )
            for base_url in base_urls
        ]

        async def consumer(c: int) -> None:
            client = pool[c % len(pool)]
            for r in range(requests):
                t0 = time.perf_counter()
                try:
                    problem = await stream_chat(client, c * requests + r)
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                latencies.append((time.perf_counter() - t0) * 1000)
                if problem is not None:
                    errors.append(problem)

        t0 = time.perf_counter()
        await asyncio.gather(*(consumer(c) for c in range(clients)))
        return errors, latencies, time.perf_counter() - t0


async def wait_for_providers(client: httpx.AsyncClient, count: int, timeout_s: float) -> None:
    """Poll the coordinator's own count: registration ends on its side, not ours."""
    async with asyncio.timeout(timeout_s):
        while True:
            if (await client.get("/health")).json()["providers"] >= count:
                return
            await asyncio.sleep(0.1)


async def measure(
    networks: list[LocalNetwork],
    key: str,
    *,
    providers: int,
    clients: int,
    requests: int,
    heartbeat_s: float = wire.HEARTBEAT_INTERVAL_S,
) -> ScaleResult:
    """Connect `providers` simulated providers, spread evenly over `networks` (replicas of
    one coordinator, or just one), run the consumers spread the same way, and report (the
    providers disconnect before this returns). Memory and CPU are summed over the replicas;
    routing is each replica's own pick timings."""
    pids = [network.coordinator.popen.pid for network in networks if network.coordinator]
    result = ScaleResult(providers, clients, requests, replicas=len(networks))
    result.rss_before_kib = sum(rss_kib(pid) for pid in pids)
    t0 = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        health = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=n.base_url, timeout=30))
            for n in networks
        ]
        shares = [providers // len(networks)] * len(networks)
        shares[0] += providers - sum(shares)
        fleets = [
            await stack.enter_async_context(
                simulated_fleet(
                    network.base_url,
                    share,
                    model=MODEL,
                    timeout_s=600,
                    heartbeat_interval_s=heartbeat_s,
                )
            )
            for network, share in zip(networks, shares, strict=True)
        ]
        for client, share in zip(health, shares, strict=True):
            await wait_for_providers(client, share, timeout_s=120)
        result.connect_s = time.perf_counter() - t0
        result.rss_with_providers_kib = sum(rss_kib(pid) for pid in pids)
        cpu_before = sum(cpu_s(pid) for pid in pids)
        errors, latencies, result.load_s = await run_clients(
            [n.base_url for n in networks], key, clients, requests
        )
        cpu_used_s = sum(cpu_s(pid) for pid in pids) - cpu_before
        routings = [(await client.get("/health")).json()["routing"] for client in health]
        result.routing = routings[0] if len(routings) == 1 else {"by_replica": routings}
        result.rss_after_load_kib = sum(rss_kib(pid) for pid in pids)
        result.fleet = {
            name: sum(dataclasses.asdict(fleet.counters)[name] for fleet in fleets)
            for name in dataclasses.asdict(FleetCounters())
        }
    result.errors = len(errors)
    result.error_samples = errors[:5]
    result.requests_per_s = len(latencies) / result.load_s if result.load_s else 0.0
    result.client_p50_ms = round(percentile(latencies, 0.50), 1)
    result.client_p99_ms = round(percentile(latencies, 0.99), 1)
    result.coordinator_cpu_ms_per_request = round(cpu_used_s * 1000 / len(latencies), 1)
    added = result.rss_with_providers_kib - result.rss_before_kib
    result.kib_per_provider = round(added / providers, 1) if providers else 0.0
    return result


@contextlib.contextmanager
def replicas(root: Path, count: int) -> Iterator[list[LocalNetwork]]:
    """`count` replicas of one coordinator on a private PostgreSQL and Redis (one plain
    coordinator on SQLite for a count of 1), stopped on exit."""
    if count == 1:
        network = start_network(root)
        try:
            yield [network]
        finally:
            network.stop()
        return
    with running_postgres() as postgres, running_redis() as redis:
        url = postgres.create_database()
        LocalNetwork(root, database_url=url).create_key("migrate", credit_usd=None)
        networks: list[LocalNetwork] = []
        try:
            for _ in range(count):
                network = LocalNetwork(
                    root,
                    database_url=url,
                    port=free_port(),
                    log_level="warning",
                    settings={**OPEN_TO_SIMULATED, "REDIS_URL": redis.url(0)},
                )
                networks.append(network)
                network.coordinator = network.spawn(
                    f"coordinator-{len(networks)}",
                    "coordinator",
                    "serve",
                    "--port",
                    str(network.port),
                    *network.db_args(),
                )
            for network in networks:
                wait_until(network.is_healthy, STARTUP_TIMEOUT_S, "a replica to answer")
            yield networks
        finally:
            for network in networks:
                network.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--providers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3, help="per client, one at a time")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="coordinator replicas on PostgreSQL and Redis, providers and clients spread "
        "evenly over them (1: one coordinator on SQLite)",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=float,
        default=wire.HEARTBEAT_INTERVAL_S,
        help="how often each simulated provider sends a heartbeat (the coordinator drops "
        "one silent for `heartbeat_timeout_s`, 90 s)",
    )
    args = parser.parse_args()
    run = Run.start("scale" if args.replicas == 1 else "scale_replicas", module="scale")
    with tempfile.TemporaryDirectory() as tmp, replicas(Path(tmp), args.replicas) as networks:
        key = networks[0].create_key("scale", credit_usd="1000")
        result = asyncio.run(
            measure(
                networks,
                key,
                providers=args.providers,
                clients=args.clients,
                requests=args.requests,
                heartbeat_s=args.heartbeat_s,
            )
        )
    report = dataclasses.asdict(result)
    print(json.dumps(report, indent=2))
    run.write(report)


if __name__ == "__main__":
    main()
