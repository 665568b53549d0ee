"""Engine efficiency: tokens/s of the real default model through the whole network vs
llama-cpp-python called directly, with the same model and settings, for 1 and for 4
concurrent requests.

Same settings on both sides: the model file, the context size, the prompt, greedy sampling,
and the provider's slots — `--slots` llama.cpp contexts with `cores // slots` threads each,
exactly as `moonflower provider serve --slots N` runs them — so the direct side runs its
concurrent requests on as many contexts as the provider has. Both evaluate the whole prompt
for every request. Rounds alternate (direct, network, direct, …) so machine noise hits both
alike, and the ratio of the medians of aggregate tokens/s is reported per concurrency,
printed and written to `benchmarks/results/throughput.json`.

    .venv/bin/python -m benchmarks.throughput [--rounds 5] [--max-tokens 256]
        [--concurrency 1 4] [--slots 2]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from benchmarks.results import Run
from moonflower.model_files import resolve_model
from tests.support.network import LocalNetwork

MESSAGES: list[Any] = [
    {"role": "user", "content": "Write a long, detailed essay about the history of Rome."}
]


def direct_round(contexts: queue.Queue[Any], concurrency: int, max_tokens: int) -> float:
    """Aggregate tokens/s of `concurrency` requests on the free contexts, directly."""

    def one() -> int:
        llama = contexts.get()
        try:
            # The provider evaluates the whole prompt for every job (it never reuses a cached
            # prefix); make the direct side do the same work.
            llama.reset()
            result = llama.create_chat_completion(
                messages=MESSAGES, temperature=0, max_tokens=max_tokens
            )
            return int(result["usage"]["completion_tokens"])
        finally:
            contexts.put(llama)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(lambda _: one(), range(concurrency)))
    return tokens / (time.perf_counter() - t0)


def network_round(client: openai.OpenAI, model: str, concurrency: int, max_tokens: int) -> float:
    """Aggregate tokens/s of `concurrency` streaming requests through the network."""

    def one() -> int:
        stream = client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            temperature=0,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        tokens = 0
        for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(lambda _: one(), range(concurrency)))
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    run = Run.start("throughput")

    from llama_cpp import Llama

    source = resolve_model("default")
    threads = max(1, (os.cpu_count() or 1) // args.slots)
    contexts: queue.Queue[Any] = queue.Queue()
    for _ in range(args.slots):
        contexts.put(
            Llama(
                str(source.path),
                n_ctx=8192,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        network = LocalNetwork(Path(tmp), log_level="warning")
        try:
            network.start_coordinator()
            network.start_provider("provider", "default", "--slots", str(args.slots))
            client = openai.OpenAI(
                base_url=f"{network.base_url}/v1", api_key=network.create_key(), max_retries=0
            )
            network_round(client, source.id, 1, 16)  # warm both paths once
            direct_round(contexts, 1, 16)
            for concurrency in args.concurrency:
                direct, through = [], []
                for _ in range(args.rounds):
                    direct.append(direct_round(contexts, concurrency, args.max_tokens))
                    through.append(network_round(client, source.id, concurrency, args.max_tokens))
                direct_tps = statistics.median(direct)
                network_tps = statistics.median(through)
                results[str(concurrency)] = {
                    "direct_tokens_per_s": round(direct_tps, 1),
                    "network_tokens_per_s": round(network_tps, 1),
                    "network_over_direct": round(network_tps / direct_tps, 3),
                }
        finally:
            network.stop()
    report = {
        "model": source.id,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "slots": args.slots,
        "threads_per_context": threads,
        "by_concurrency": results,
    }
    print(json.dumps(report, indent=2))
    run.write(report)


if __name__ == "__main__":
    main()
