"""Moonflower providers whose engine streams the synthetic upstream's tokens at its rate: a
benchmark instrument, never used outside benchmarks/.

Runs `--providers` simulated providers (`tests.support.simulated_providers`: real
WebSocket clients speaking the real protocol, no model and no attestation, so trust
`none`) in this process, each answering every job with `synthetic_tokens(--tokens)`, one
sealed text event per token, waiting `--interval-ms` before each: the same text at the
same rate as `benchmarks.synthetic_upstream`. A coordinator routes to them only with
`MOONFLOWER_MIN_TRUST=none` and `MOONFLOWER_ALLOW_ANONYMOUS_PROVIDERS=true` (they present no
provider token). Runs until interrupted (SIGINT or SIGTERM). Usage:

    .venv/bin/python -m benchmarks.synthetic_provider --coordinator http://127.0.0.1:8000
        [--providers 1] [--slots 64] [--tokens 64] [--interval-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from benchmarks.synthetic_upstream import synthetic_tokens
from moonflower import wire
from tests.support.simulated_providers import FleetCounters, SimulatedProvider

MODEL = "synthetic"


async def serve(
    coordinator: str, *, providers: int, slots: int, tokens: int, interval_s: float
) -> None:
    url = coordinator.replace("http://", "ws://") + "/ws/provider"
    counters = FleetCounters()
    words = synthetic_tokens(tokens)
    fleet = [
        SimulatedProvider(url, MODEL, slots, counters, words=words, token_delay_s=interval_s)
        for _ in range(providers)
    ]
    for provider in fleet:
        await provider.connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(p.serve(wire.HEARTBEAT_INTERVAL_S)) for p in fleet]
    print(f"registered {counters.registered} synthetic providers", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for provider in fleet:
        with contextlib.suppress(Exception):
            await provider.close()
    print(f"served {counters.jobs} jobs, {counters.disconnects} disconnects", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--providers", type=int, default=1)
    parser.add_argument("--slots", type=int, default=64, help="concurrent jobs per provider")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(
        serve(
            args.coordinator,
            providers=args.providers,
            slots=args.slots,
            tokens=args.tokens,
            interval_s=args.interval_ms / 1000,
        )
    )


if __name__ == "__main__":
    main()
