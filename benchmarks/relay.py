"""Relay throughput: how many tokens and requests per second one coordinator process relays
before latency degrades, with synthetic providers (no model: `benchmarks.synthetic_provider`
emits its tokens as fast as it can, one sealed event per token) so the coordinator is the
only thing measured.

At each concurrency level, `--requests` chat completions of `--tokens` tokens go through the
coordinator, streaming (and then the same whole, non-streaming); reported per level:
relayed tokens/s and requests/s, time to first token and total time (p50/p99), and errors.
"Sustained" is the best level whose p99 total time stays within `--degrade` times the
lowest level's. Results go to `benchmarks/results/relay.json`.

    .venv/bin/python -m benchmarks.relay [--concurrency 4 16 64 128] [--requests 200]
        [--tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.gateway_overhead import REQUEST_TIMEOUT_S, Target, percentile, run_level
from benchmarks.gateway_processes import start_moonflower
from benchmarks.http_client import Connection, closed_loop
from benchmarks.results import Run
from benchmarks.synthetic_upstream import synthetic_tokens
from moonflower import eventloop


async def whole_once(connection: Connection, target: Target, expected: str) -> float:
    t0 = time.perf_counter()
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        content = await connection.post_json(
            "/v1/chat/completions",
            {"model": target.model, "messages": [{"role": "user", "content": "go"}]},
            {"Authorization": f"Bearer {target.api_key}"},
        )
    if orjson.loads(content)["choices"][0]["message"]["content"] != expected:
        raise RuntimeError("unexpected text")
    return (time.perf_counter() - t0) * 1000


async def whole_level(
    target: Target, concurrency: int, requests: int, expected: str
) -> tuple[list[float], int, float]:
    totals, failures, wall_s = await closed_loop(
        target.base_url,
        concurrency,
        requests,
        lambda connection: whole_once(connection, target, expected),
    )
    return totals, len(failures), wall_s


def level(
    concurrency: int, tokens: int, totals: list[float], ttfts: list[float], errors: int, wall: float
) -> dict[str, Any]:
    done = len(totals)
    return {
        "concurrency": concurrency,
        "requests": done + errors,
        "errors": errors,
        "tokens_per_s": round(done * tokens / wall),
        "requests_per_s": round(done / wall, 1),
        "ttft_ms": {
            "p50": round(percentile(ttfts, 0.5), 1),
            "p99": round(percentile(ttfts, 0.99), 1),
        }
        if ttfts
        else None,
        "total_ms": {
            "p50": round(percentile(totals, 0.5), 1),
            "p99": round(percentile(totals, 0.99), 1),
        },
    }


def sustained(levels: list[dict[str, Any]], degrade: float) -> dict[str, Any]:
    base = levels[0]["total_ms"]["p99"]
    fine = [lv for lv in levels if not lv["errors"] and lv["total_ms"]["p99"] <= degrade * base]
    return max(fine, key=lambda lv: lv["tokens_per_s"]) if fine else levels[0]


async def measure(base_url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    target = Target("moonflower", base_url, "synthetic", key)
    expected = "".join(synthetic_tokens(args.tokens))
    report: dict[str, Any] = {"streaming": [], "whole": []}
    await run_level(target, 4, 16, expected)  # warm up
    for concurrency in args.concurrency:
        requests = max(args.requests, 2 * concurrency)
        samples, errors, wall = await run_level(target, concurrency, requests, expected)
        if errors:
            print(f"errors at {concurrency}: {errors[:2]}", flush=True)
        report["streaming"].append(
            level(
                concurrency,
                args.tokens,
                [s.total_ms for s in samples],
                [s.ttft_ms for s in samples],
                len(errors),
                wall,
            )
        )
        totals, failed, wall = await whole_level(target, concurrency, requests, expected)
        report["whole"].append(level(concurrency, args.tokens, totals, [], failed, wall))
        print(json.dumps(report["streaming"][-1]), flush=True)
    report["sustained_streaming"] = sustained(report["streaming"], args.degrade)
    report["sustained_whole"] = sustained(report["whole"], args.degrade)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 64, 128])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--degrade", type=float, default=2.0)
    args = parser.parse_args()
    run = Run.start("relay")
    providers = math.ceil(max(args.concurrency) / 64)
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_moonflower(Path(tmp), args.tokens, 0.0, providers) as (base_url, key),
    ):
        report = eventloop.run(measure(base_url, key, args))
    report["command_args"] = vars(args)
    run.write(report)
    print(json.dumps({k: report[k] for k in ("sustained_streaming", "sustained_whole")}, indent=2))


if __name__ == "__main__":
    main()
