"""Tokens/s of one provider serving 1, 2 and 4 streaming chat requests at once.

One real coordinator and one real provider process (`--slots 4`, the default model) on
loopback. Each round sends a burst of 1, then 2, then 4 simultaneous streaming requests
(the same long-answer prompt, temperature 0.7, `max_tokens` each), so machine noise hits
every level alike. Per level it reports the median over rounds of the aggregate completion
tokens/s (all tokens of the burst over the burst's wall time) and of the mean per-request
tokens/s (a request's tokens over its own time, prompt evaluation and network included),
each also as a ratio to the level-1 figure, and the provider's memory after the run;
printed and written to `benchmarks/results/concurrency.json`. Usage:

    .venv/bin/python -m benchmarks.concurrency [--rounds 5] [--max-tokens 128] [--slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from benchmarks.results import Run
from moonflower.model_files import resolve_model
from tests.support.network import LocalNetwork

LEVELS = (1, 2, 4)
MESSAGES: list[Any] = [
    {"role": "user", "content": "Write a long, detailed essay about the history of Rome."}
]


async def one_request(client: openai.AsyncOpenAI, model: str, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) of one streaming request."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        temperature=0.7,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens = 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens, time.perf_counter() - t0


async def burst(
    client: openai.AsyncOpenAI, model: str, concurrency: int, max_tokens: int
) -> dict[str, float]:
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(one_request(client, model, max_tokens) for _ in range(concurrency))
    )
    wall = time.perf_counter() - t0
    return {
        "tokens": sum(tokens for tokens, _ in results),
        "aggregate": sum(tokens for tokens, _ in results) / wall,
        "per_request": statistics.mean(tokens / seconds for tokens, seconds in results),
    }


async def measure(base_url: str, key: str, rounds: int, max_tokens: int) -> dict[int, list[Any]]:
    model = resolve_model("default").id
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)
    await burst(client, model, max(LEVELS), 16)  # touch every slot once
    results: dict[int, list[Any]] = {level: [] for level in LEVELS}
    for _ in range(rounds):
        for level in LEVELS:
            results[level].append(await burst(client, model, level, max_tokens))
    await client.close()
    return results


def memory_mb(pid: int) -> dict[str, float]:
    """The provider's resident memory, from Linux's smaps_rollup (empty elsewhere)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if not rollup.exists():
        return {}
    fields = {}
    for line in rollup.read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) / 1024
    return {name: round(fields[name]) for name in ("Rss", "Pss", "Anonymous") if name in fields}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    run = Run.start("concurrency")

    with tempfile.TemporaryDirectory() as tmp:
        network = LocalNetwork(Path(tmp), log_level="warning")
        try:
            network.start_coordinator()
            provider = network.start_provider("provider", "default", "--slots", str(args.slots))
            key = network.create_key(credit_usd="1000")
            results = asyncio.run(measure(network.base_url, key, args.rounds, args.max_tokens))
            memory = memory_mb(provider.popen.pid)
        finally:
            network.stop()
    aggregate = {
        level: statistics.median(r["aggregate"] for r in results[level]) for level in LEVELS
    }
    per_request = {
        level: statistics.median(r["per_request"] for r in results[level]) for level in LEVELS
    }
    report = {
        "model": resolve_model("default").id,
        "slots": args.slots,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "levels": {
            str(level): {
                "tokens_per_burst": [r["tokens"] for r in results[level]],
                "aggregate_tokens_per_s": round(aggregate[level], 1),
                "per_request_tokens_per_s": round(per_request[level], 1),
                "aggregate_over_1": round(aggregate[level] / aggregate[1], 2),
                "per_request_over_1": round(per_request[level] / per_request[1], 2),
            }
            for level in LEVELS
        },
        "provider_memory_mb": memory,
    }
    print(json.dumps(report, indent=2))
    run.write(report)


if __name__ == "__main__":
    main()
