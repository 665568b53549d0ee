"""Runs every benchmark, one after another, with the arguments benchmarks/README.md
documents, then writes the summary and charts (`benchmarks.report`).

Each benchmark is a subprocess in its own process group, bounded by its timeout: on expiry
the group is interrupted (so the benchmark stops the processes it started), then killed.
A failed or timed-out benchmark does not stop the others; the exit status is non-zero if
any failed. Usage:

    .venv/bin/python -m benchmarks.run_all [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from benchmarks.results import REPO

INTERRUPT_GRACE_S = 30.0
REPORT_TIMEOUT_S = 1200.0
"""The report may first install matplotlib for the charts."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    args: tuple[str, ...]
    timeout_s: float

    @property
    def command(self) -> str:
        return " ".join((".venv/bin/python", "-m", f"benchmarks.{self.name}", *self.args))


BENCHMARKS = (
    Benchmark("throughput", "engine efficiency", ("--rounds", "5", "--max-tokens", "128"), 1800),
    Benchmark(
        "settlements", "ledger settlements", ("--jobs", "1000", "--concurrency", "1", "8"), 900
    ),
    Benchmark(
        "scale",
        "a thousand providers, a hundred consumers",
        ("--providers", "1000", "--clients", "100", "--requests", "3"),
        900,
    ),
    Benchmark(
        "concurrency",
        "one provider serving several requests",
        ("--rounds", "5", "--max-tokens", "128", "--slots", "4"),
        1800,
    ),
    Benchmark(
        "gateway_overhead",
        "latency added by LiteLLM and by Moonflower",
        ("--concurrency", "1", "16", "64", "256", "--requests", "100"),
        # Includes installing LiteLLM on first use.
        2400,
    ),
    Benchmark(
        "relay",
        "relay throughput",
        ("--concurrency", "4", "16", "64", "128", "--requests", "200"),
        900,
    ),
    Benchmark(
        "replicas",
        "replicas and the cross-replica hop",
        ("--concurrency", "4", "16", "--requests", "200"),
        900,
    ),
    Benchmark(
        "queue_line",
        "queue order across replicas under contention",
        ("--slots", "4", "--concurrency", "16", "32", "--requests", "400"),
        900,
    ),
)


def run_bounded(argv: list[str], timeout_s: float) -> str:
    """Run `argv` from the repository root; "ok", "failed (exit N)" or "timed out"."""
    popen = subprocess.Popen(argv, cwd=REPO, start_new_session=True)
    try:
        code = popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(popen)
        return f"timed out after {timeout_s:.0f} s"
    except KeyboardInterrupt:
        stop_group(popen)
        raise
    return "ok" if code == 0 else f"failed (exit {code})"


def stop_group(popen: subprocess.Popen[bytes]) -> None:
    """Interrupt the benchmark's process group, so its cleanup stops what it started; kill
    the group if it is still there after a grace period."""
    for sig, grace in ((signal.SIGINT, INTERRUPT_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            popen.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run(benchmarks: list[Benchmark]) -> list[tuple[Benchmark, str, float]]:
    outcomes = []
    for benchmark in benchmarks:
        print(f"\n== {benchmark.command}", flush=True)
        argv = [sys.executable, "-m", f"benchmarks.{benchmark.name}", *benchmark.args]
        t0 = time.perf_counter()
        outcome = run_bounded(argv, benchmark.timeout_s)
        wall_s = time.perf_counter() - t0
        print(f"== {benchmark.name}: {outcome} in {wall_s:.1f} s", flush=True)
        outcomes.append((benchmark, outcome, wall_s))
    return outcomes


def main() -> None:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(
        description="Run the benchmarks with their documented arguments, then the report."
    )
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=str(names))
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]

    outcomes = run(chosen)
    print("\n== report", flush=True)
    report = run_bounded([sys.executable, "-m", "benchmarks.report"], REPORT_TIMEOUT_S)

    print("\n| benchmark | outcome | wall time |\n|---|---|---|")
    for benchmark, outcome, wall_s in outcomes:
        print(f"| {benchmark.name} | {outcome} | {wall_s:.1f} s |")
    print(f"| report | {report} | |")
    if report != "ok" or any(outcome != "ok" for _, outcome, _ in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
