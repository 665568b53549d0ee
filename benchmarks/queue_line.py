"""The line across replicas under contention: what keeping one order for a model's waiting
requests costs when there are far more requests than slots — side by side in one run, with
synthetic providers (no model).

Two set-ups with the same number of slots in all (`--slots`), each measured with the same
streaming chat completions at concurrencies well above it, so that nearly every request
waits for a slot:

- `single`: one coordinator, no Redis, one provider with every slot (one queue);
- `two_replicas`: two replicas on one Redis, each with a provider of half the slots, the
  consumers spread over both: waiting requests take tickets in the model's one line and each
  freed slot goes to the first ticket, wherever it waits (`coordinator/turns.py`).

Reported per set-up and concurrency: tokens/s, time to first token (which here is mostly
the wait for a turn), and Redis commands per request. Results go to
`benchmarks/results/queue_line.json`.

    .venv/bin/python -m benchmarks.queue_line [--slots 4] [--concurrency 16 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.gateway_overhead import Target
from benchmarks.replicas import coordinator, counter, measure, synthetic_providers
from benchmarks.results import Run
from moonflower import eventloop
from tests.support.redis import running_redis

QUEUE_SETTINGS = {"QUEUE_MAX_WAITING": "1024", "QUEUE_MAX_WAIT_S": "120"}
"""Room for every request of a run to wait: the benchmark measures waiting, not refusals."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    run = Run.start("queue_line")
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        single = coordinator(root / "single", QUEUE_SETTINGS)
        stack.callback(single.stop)
        key = single.create_key("bench", credit_usd="10000")
        stack.enter_context(
            synthetic_providers(root, single, "single-provider", args.tokens, slots=args.slots)
        )
        report["single"] = eventloop.run(
            measure([Target("single", single.base_url, "synthetic", key)], args, counter(None))
        )
        stack.close()

        server = stack.enter_context(running_redis())
        shared = {**QUEUE_SETTINGS, "REDIS_URL": server.url(0)}
        replicas = [coordinator(root / "replicas", shared) for _ in range(2)]
        for replica in replicas:
            stack.callback(replica.stop)
        key = replicas[0].create_key("bench", credit_usd="10000")
        for n, replica in enumerate(replicas):
            stack.enter_context(
                synthetic_providers(
                    root, replica, f"provider-{n}", args.tokens, slots=max(1, args.slots // 2)
                )
            )
        targets = [
            Target(f"replica-{n}", r.base_url, "synthetic", key) for n, r in enumerate(replicas)
        ]
        report["two_replicas"] = eventloop.run(measure(targets, args, counter(server)))
    report["throughput_ratio"] = [
        {
            "concurrency": one["concurrency"],
            "two_replicas_over_single": round(two["tokens_per_s"] / one["tokens_per_s"], 2),
        }
        for one, two in zip(report["single"], report["two_replicas"], strict=True)
    ]
    report["command_args"] = vars(args)
    run.write(report)
    print(json.dumps(report["throughput_ratio"], indent=2))


if __name__ == "__main__":
    main()
