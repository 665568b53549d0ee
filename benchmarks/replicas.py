"""Replicas: relay throughput and time to first token through one coordinator and through
two replicas sharing Redis, the added cost of the cross-replica hop, and Redis operations
per request — side by side in one run, with synthetic providers (no model).

Four set-ups, each measured with the same streaming chat completions (`--tokens` tokens):

- `single`: one coordinator, no Redis (what `moonflower up` runs);
- `replica_local`: two replicas on one Redis, consumers calling the replica their provider
  is connected to;
- `replica_hop`: the same replicas, consumers calling the other one, which forwards each
  request (`coordinator/forwarding.py`);
- `two_replicas`: both replicas with providers of their own, consumers spread over both.

The hop's added time to first token is `replica_hop` minus `replica_local` (p50/p99). Redis
operations per request are the server's own command count over the requests of a set-up.
Results go to `benchmarks/results/replicas.json`.

    .venv/bin/python -m benchmarks.replicas [--concurrency 4 16] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
from redis import asyncio as aioredis

from benchmarks.gateway_overhead import Target, run_level
from benchmarks.gateway_processes import REPO, SYNTHETIC_PROVIDERS, ServiceProcess
from benchmarks.relay import level
from benchmarks.results import Run
from benchmarks.synthetic_upstream import synthetic_tokens
from moonflower import eventloop
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, free_port, wait_until
from tests.support.redis import RedisServer, running_redis


@contextmanager
def synthetic_providers(
    root: Path, network: LocalNetwork, name: str, tokens: int, *, slots: int = 64
) -> Iterator[None]:
    """One synthetic provider with `slots` slots connected to `network`'s coordinator."""
    before = network.provider_count()
    argv = [sys.executable, "-m", "benchmarks.synthetic_provider"]
    argv += ["--coordinator", network.base_url, "--providers", "1"]
    argv += ["--slots", str(slots), "--tokens", str(tokens), "--interval-ms", "0"]
    log_path = root / f"{name}.log"
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=network.env(), cwd=REPO
        )
    provider = ServiceProcess(name, popen, 0, log_path)
    try:
        wait_until(
            lambda: popen.poll() is not None or network.provider_count() > before,
            STARTUP_TIMEOUT_S,
            f"{name} to register",
        )
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{provider.log_tail()}")
        yield
    finally:
        provider.stop()


def coordinator(root: Path, settings: dict[str, str]) -> LocalNetwork:
    network = LocalNetwork(
        root, port=free_port(), log_level="warning", settings={**SYNTHETIC_PROVIDERS, **settings}
    )
    network.coordinator = network.spawn(
        f"coordinator-{network.port}",
        "coordinator",
        "serve",
        "--port",
        str(network.port),
        *network.db_args(),
    )
    wait_until(network.is_healthy, STARTUP_TIMEOUT_S, "a coordinator to answer /health")
    return network


async def measure(
    targets: list[Target], args: argparse.Namespace, commands: Any
) -> list[dict[str, Any]]:
    """Each concurrency level with the requests spread evenly over `targets`."""
    expected = "".join(synthetic_tokens(args.tokens))
    await asyncio.gather(*(run_level(t, 2, 8, expected) for t in targets))  # warm up
    levels = []
    for concurrency in args.concurrency:
        share = max(1, concurrency // len(targets))
        requests = max(args.requests, 2 * concurrency) // len(targets)
        before = commands()
        loop = asyncio.get_running_loop()
        started = loop.time()
        runs = await asyncio.gather(*(run_level(t, share, requests, expected) for t in targets))
        wall = loop.time() - started
        samples = [s for samples, _errors, _wall in runs for s in samples]
        errors = sum(len(errors) for _samples, errors, _wall in runs)
        result = level(
            concurrency,
            args.tokens,
            [s.total_ms for s in samples],
            [s.ttft_ms for s in samples],
            errors,
            wall,
        )
        done = len(samples) + errors
        after = commands()
        result["redis_ops_per_request"] = (
            None if before is None else round((after - before) / max(1, done), 2)
        )
        levels.append(result)
        print(json.dumps(result), flush=True)
    return levels


async def stream_relay(server: RedisServer, events: int, streams: int) -> dict[str, Any]:
    """The road not taken: relaying each event through a Redis stream (XADD by the replica
    holding the provider, blocking XREAD by the consumer's replica), `streams` jobs at once,
    each of `events` events of a typical sealed frame's size. Events per second, to set
    against the relayed tokens per second above (one event per token)."""
    client = aioredis.Redis(host=server.host, port=server.port)
    frame = b"x" * 300

    async def job(n: int) -> None:
        key = f"bench:relay:{n}"

        async def produce() -> None:
            for _ in range(events):
                await client.xadd(key, {"e": frame})

        async def consume() -> None:
            last, seen = "0", 0
            while seen < events:
                reply = await client.xread({key: last}, block=1000, count=64)
                for _key, entries in reply:
                    seen += len(entries)
                    last = entries[-1][0]

        await asyncio.gather(produce(), consume())
        await client.delete(key)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(job(n) for n in range(streams)))
    wall = loop.time() - started
    await client.aclose()
    return {
        "streams": streams,
        "events": events * streams,
        "events_per_s": round(events * streams / wall),
    }


def counter(server: RedisServer | None) -> Any:
    if server is None:
        return lambda: None
    client = redis.Redis(host=server.host, port=server.port)
    return lambda: int(client.info("stats")["total_commands_processed"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    run = Run.start("replicas")
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        single = coordinator(root / "single", {})
        stack.callback(single.stop)
        key = single.create_key("bench", credit_usd="10000")
        stack.enter_context(synthetic_providers(root, single, "single-provider", args.tokens))
        report["single"] = eventloop.run(
            measure([Target("single", single.base_url, "synthetic", key)], args, counter(None))
        )
        stack.close()

        server = stack.enter_context(running_redis())
        shared = {"REDIS_URL": server.url(0)}
        a = coordinator(root / "replicas", shared)
        stack.callback(a.stop)
        b = coordinator(root / "replicas", shared)
        stack.callback(b.stop)
        key = a.create_key("bench", credit_usd="10000")
        stack.enter_context(synthetic_providers(root, b, "provider-b", args.tokens))
        ops = counter(server)
        local = Target("replica_local", b.base_url, "synthetic", key)
        hop = Target("replica_hop", a.base_url, "synthetic", key)
        report["replica_local"] = eventloop.run(measure([local], args, ops))
        report["replica_hop"] = eventloop.run(measure([hop], args, ops))
        stack.enter_context(synthetic_providers(root, a, "provider-a", args.tokens))
        report["redis_stream_relay"] = [
            eventloop.run(stream_relay(server, args.tokens, streams))
            for streams in args.concurrency
        ]
        report["two_replicas"] = eventloop.run(
            measure([Target("a", a.base_url, "synthetic", key), local], args, ops)
        )
    report["hop_added_ttft_ms"] = [
        {
            "concurrency": here["concurrency"],
            "p50": round(there["ttft_ms"]["p50"] - here["ttft_ms"]["p50"], 1),
            "p99": round(there["ttft_ms"]["p99"] - here["ttft_ms"]["p99"], 1),
        }
        for here, there in zip(report["replica_local"], report["replica_hop"], strict=True)
    ]
    report["command_args"] = vars(args)
    run.write(report)
    print(json.dumps(report["hop_added_ttft_ms"], indent=2))


if __name__ == "__main__":
    main()
