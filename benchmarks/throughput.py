"""Tokens/s of a 256-token generation through the whole network vs llama-cpp-python directly.

Both sides use the same model file, context size, thread count, prompt and greedy sampling,
and both evaluate the whole prompt each time; runs alternate (direct, network, direct, …)
so machine noise hits both alike, and the ratio of medians is reported. Usage:

    .venv/bin/python -m benchmarks.throughput [--rounds 5] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from moonflower.provider.models import resolve_model
from tests.support.network import LocalNetwork

MESSAGES: list[Any] = [
    {"role": "user", "content": "Write a long, detailed essay about the history of Rome."}
]


def direct_rate(llama: Any, max_tokens: int) -> tuple[float, int]:
    # The provider's engine evaluates the whole prompt for every job (it never reuses a
    # cached prefix, which would make identical requests diverge); make the direct side do
    # the same work instead of reusing the previous round's prompt.
    llama.reset()
    t0 = time.perf_counter()
    result = llama.create_chat_completion(messages=MESSAGES, temperature=0, max_tokens=max_tokens)
    elapsed = time.perf_counter() - t0
    tokens = int(result["usage"]["completion_tokens"])
    return tokens / elapsed, tokens


def network_rate(client: openai.OpenAI, model: str, max_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
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
    elapsed = time.perf_counter() - t0
    return tokens / elapsed, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    from llama_cpp import Llama

    source = resolve_model("default")
    llama = Llama(str(source.path), n_ctx=8192, n_threads=os.cpu_count(), verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        network = LocalNetwork(Path(tmp), log_level="warning")
        try:
            network.start_coordinator()
            network.start_provider()
            client = openai.OpenAI(
                base_url=f"{network.base_url}/v1", api_key=network.create_key(), max_retries=0
            )
            network_rate(client, source.id, 16)  # warm both paths once
            direct_rate(llama, 16)
            direct, through = [], []
            for _ in range(args.rounds):
                direct.append(direct_rate(llama, args.max_tokens))
                through.append(network_rate(client, source.id, args.max_tokens))
        finally:
            network.stop()
    direct_tps = statistics.median(r for r, _ in direct)
    network_tps = statistics.median(r for r, _ in through)
    report = {
        "model": source.id,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "tokens_generated": {"direct": [t for _, t in direct], "network": [t for _, t in through]},
        "direct_tokens_per_s": round(direct_tps, 1),
        "network_tokens_per_s": round(network_tps, 1),
        "network_over_direct": round(network_tps / direct_tps, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
