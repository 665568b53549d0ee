"""Gateway overhead: the latency LiteLLM's proxy and Moonflower each add in front of the same
synthetic model, measured in the same run.

Three targets stream the same text (`--tokens` tokens, one every `--interval-ms`) to the
same client workload (`benchmarks.http_client`: one kept-alive connection per concurrent
client, on uvloop, so the load generator takes as little of the shared cores as it can):

- **direct**: `benchmarks.synthetic_upstream`, called directly;
- **litellm**: LiteLLM's proxy (`litellm --config`, one worker, a master key as its only
  credential, no database) with that upstream as its only model (`openai/synthetic`),
  installed into its own virtualenv `benchmarks/.venvs/litellm` (created on first use;
  if that fails, the target is skipped and the output says so);
- **moonflower**: a real coordinator process (`LocalNetwork`, SQLite,
  `MOONFLOWER_MIN_TRUST=none`, `MOONFLOWER_ALLOW_ANONYMOUS_PROVIDERS=true`) with
  `benchmarks.synthetic_provider` processes connected: simulated providers that stream the
  same tokens at the same rate over the real protocol (sealed jobs, one sealed event per
  token), but with no provider token and no attestation.

At each concurrency level every target runs `--requests` streaming requests (at least two
per concurrent client), targets taking turns level by level, after a short warm-up. Per
request: time to first token (first non-empty content delta), the gaps between content
chunks, and total time until the stream ends. Reported per target and level: percentiles,
the latency each gateway adds over direct (difference of percentiles), and the ratio of
Moonflower's added latency to LiteLLM's. Writes `benchmarks/results/gateway_overhead.json`
and prints a markdown table. Usage:

    .venv/bin/python -m benchmarks.gateway_overhead [--concurrency 1 16 64] [--requests 100]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.gateway_processes import (
    ServiceProcess,
    start_litellm,
    start_moonflower,
    start_upstream,
)
from benchmarks.http_client import Connection, closed_loop
from benchmarks.results import Run
from benchmarks.synthetic_upstream import synthetic_tokens
from moonflower import eventloop

REQUEST_TIMEOUT_S = 120.0
WARMUP_REQUESTS = 8


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str
    model: str
    api_key: str | None = None


@dataclass
class Sample:
    ttft_ms: float
    total_ms: float
    gaps_ms: list[float]


@dataclass
class LevelResult:
    target: str
    concurrency: int
    requests: int
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    ttft_ms: dict[str, float] = field(default_factory=dict)
    inter_token_ms: dict[str, float] = field(default_factory=dict)
    total_ms: dict[str, float] = field(default_factory=dict)
    added_ttft_ms: dict[str, float] = field(default_factory=dict)
    added_total_ms: dict[str, float] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0


def summary(values: list[float]) -> dict[str, float]:
    return {f"p{round(q * 100)}": round(percentile(values, q), 2) for q in (0.5, 0.95, 0.99)}


async def stream_once(connection: Connection, target: Target, expected: str) -> Sample:
    """One streaming chat completion through `target`; raises on anything but the expected
    text ending in `[DONE]`."""
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": "Say the synthetic text."}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    text: list[str] = []
    arrivals: list[float] = []
    is_done = False
    t0 = time.perf_counter()
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        async for data in connection.stream_events("/v1/chat/completions", body, headers):
            if data == b"[DONE]":
                is_done = True
                continue
            chunk = orjson.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            for choice in chunk.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text.append(content)
                    arrivals.append(time.perf_counter())
    total = time.perf_counter() - t0
    if not is_done:
        raise RuntimeError("stream ended without [DONE]")
    if "".join(text) != expected:
        raise RuntimeError(f"unexpected text {''.join(text)[:80]!r}")
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    return Sample((arrivals[0] - t0) * 1000, total * 1000, gaps)


async def run_level(
    target: Target, concurrency: int, requests: int, expected: str
) -> tuple[list[Sample], list[str], float]:
    """`requests` streaming requests through `target`, `concurrency` at a time."""
    return await closed_loop(
        target.base_url,
        concurrency,
        requests,
        lambda connection: stream_once(connection, target, expected),
    )


def level_result(
    target: str, concurrency: int, samples: list[Sample], errors: list[str], wall_s: float
) -> LevelResult:
    gaps = [gap for s in samples for gap in s.gaps_ms]
    return LevelResult(
        target=target,
        concurrency=concurrency,
        requests=len(samples) + len(errors),
        errors=len(errors),
        error_samples=errors[:3],
        wall_s=round(wall_s, 2),
        ttft_ms=summary([s.ttft_ms for s in samples]),
        inter_token_ms=summary(gaps),
        total_ms=summary([s.total_ms for s in samples]),
    )


def add_overheads(results: list[LevelResult]) -> dict[str, Any]:
    """Fill each gateway's added latency over direct; the Moonflower / LiteLLM ratios."""
    direct = {r.concurrency: r for r in results if r.target == "direct"}
    by_key = {(r.target, r.concurrency): r for r in results}
    for r in results:
        base = direct.get(r.concurrency)
        if base is None or r.target == "direct":
            continue
        r.added_ttft_ms = {q: round(v - base.ttft_ms[q], 2) for q, v in r.ttft_ms.items()}
        r.added_total_ms = {q: round(v - base.total_ms[q], 2) for q, v in r.total_ms.items()}
    ratios: dict[str, Any] = {}
    for concurrency in direct:
        mf = by_key.get(("moonflower", concurrency))
        lite = by_key.get(("litellm", concurrency))
        if mf is None or lite is None:
            continue
        ratios[str(concurrency)] = {
            metric: {q: round(ours[q] / theirs[q], 2) if theirs[q] > 0 else None for q in ours}
            for metric, ours, theirs in (
                ("ttft", mf.added_ttft_ms, lite.added_ttft_ms),
                ("total", mf.added_total_ms, lite.added_total_ms),
            )
        }
    return ratios


async def measure(
    targets: list[Target], levels: list[int], requests: int, expected: str
) -> list[LevelResult]:
    results: list[LevelResult] = []
    for target in targets:
        await run_level(target, 2, WARMUP_REQUESTS, expected)
    for concurrency in levels:
        count = max(requests, 2 * concurrency)
        for target in targets:
            samples, errors, wall_s = await run_level(target, concurrency, count, expected)
            result = level_result(target.name, concurrency, samples, errors, wall_s)
            print(
                f"{target.name} c={concurrency}: {result.requests} requests, "
                f"{result.errors} errors, ttft p50 {result.ttft_ms['p50']} ms",
                flush=True,
            )
            results.append(result)
    return results


def markdown(results: list[LevelResult], ratios: dict[str, Any]) -> str:
    lines = [
        "| target | conc. | req. | err. | TTFT p50 / p95 / p99 ms | inter-token p50 / p99 ms "
        "| total p50 / p99 ms | added TTFT p50 / p95 / p99 ms | added total p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r.concurrency, r.target != "direct", r.target)):
        added_ttft = " / ".join(f"{v:+.1f}" for v in r.added_ttft_ms.values()) or "—"
        added_total = (
            f"{r.added_total_ms['p50']:+.1f} / {r.added_total_ms['p99']:+.1f}"
            if r.added_total_ms
            else "—"
        )
        lines.append(
            f"| {r.target} | {r.concurrency} | {r.requests} | {r.errors} "
            f"| {r.ttft_ms['p50']:.1f} / {r.ttft_ms['p95']:.1f} / {r.ttft_ms['p99']:.1f} "
            f"| {r.inter_token_ms['p50']:.2f} / {r.inter_token_ms['p99']:.2f} "
            f"| {r.total_ms['p50']:.1f} / {r.total_ms['p99']:.1f} | {added_ttft} | {added_total} |"
        )
    if ratios:
        lines += [
            "",
            "| conc. | Moonflower / LiteLLM added TTFT p50 / p95 / p99 "
            "| added total p50 / p95 / p99 |",
            "|---|---|---|",
        ]
        for concurrency, ratio in ratios.items():
            cells = [
                " / ".join("n/a" if v is None else f"{v:.2f}" for v in ratio[m].values())
                for m in ("ttft", "total")
            ]
            lines.append(f"| {concurrency} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


@contextmanager
def running_targets(
    root: Path, tokens: int, interval_ms: float, providers: int, skip_litellm: bool
) -> Iterator[tuple[list[Target], dict[str, str]]]:
    """Every target's processes, started and (on exit) stopped; notes on skipped ones."""
    notes: dict[str, str] = {}
    with ExitStack() as stack:
        upstream: ServiceProcess = stack.enter_context(start_upstream(root, tokens, interval_ms))
        targets = [Target("direct", upstream.base_url, "synthetic")]
        if skip_litellm:
            notes["litellm"] = "skipped (--skip-litellm)"
        else:
            try:
                litellm, master_key = stack.enter_context(start_litellm(root, upstream.base_url))
                targets.append(Target("litellm", litellm.base_url, "synthetic", master_key))
            except (OSError, RuntimeError, TimeoutError) as exc:
                notes["litellm"] = f"skipped: {exc}"
                print(f"LiteLLM skipped: {exc}", flush=True)
        base_url, key = stack.enter_context(start_moonflower(root, tokens, interval_ms, providers))
        targets.append(Target("moonflower", base_url, "synthetic", key))
        yield targets, notes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=100, help="per target and level")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--skip-litellm", action="store_true")
    args = parser.parse_args()
    run = Run.start("gateway_overhead")
    providers = max(1, math.ceil(max(args.concurrency) / 64))
    expected = "".join(synthetic_tokens(args.tokens))
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_targets(Path(tmp), args.tokens, args.interval_ms, providers, args.skip_litellm) as (
            targets,
            notes,
        ),
    ):
        results = eventloop.run(measure(targets, args.concurrency, args.requests, expected))
    ratios = add_overheads(results)
    report = {
        "command": vars(args),
        "machine": machine(),
        "notes": notes,
        "results": [asdict(r) for r in results],
        "moonflower_over_litellm_added": ratios,
    }
    run.write(report)
    print(markdown(results, ratios))
    for name, note in notes.items():
        print(f"\n{name}: {note}")


if __name__ == "__main__":
    main()
