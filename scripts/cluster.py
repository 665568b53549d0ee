"""The local cluster `scripts/cluster` runs: a private PostgreSQL server and Redis server on
loopback (in temporary directories, deleted at the end), `moonflower coordinator serve
--workers N` on one port, P providers of one model, each connected through that port, and
an API key with $100 of credit. It prints how to call it, then runs until Ctrl-C or SIGTERM,
when it stops every process it started. For production, see docs/deploy.md.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, wait_until  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402
from tests.support.redis import running_redis  # noqa: E402

REGISTERED = re.compile(r"registered with \S+ as ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="coordinator replicas")
    parser.add_argument("--providers", type=int, default=1, help="provider processes")
    parser.add_argument("--port", type=int, default=8000, help="the cluster's one port")
    parser.add_argument("--model", default="default", help="the model each provider serves")
    args = parser.parse_args()
    stopped = False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with (
        tempfile.TemporaryDirectory(prefix="moonflower-cluster-") as root,
        running_postgres() as postgres,
        running_redis() as redis,
    ):
        network = LocalNetwork(
            Path(root),
            database_url=postgres.create_database("moonflower"),
            port=args.port,
            log_level="info",
            settings={"REDIS_URL": redis.url(0)},
        )
        try:
            key = network.create_key("you", credit_usd="100")  # migrates the ledger too
            network.coordinator = network.spawn(
                "coordinator",
                "coordinator",
                "serve",
                "--workers",
                str(args.workers),
                "--port",
                str(args.port),
                *network.db_args(),
            )
            wait_until(network.is_healthy, STARTUP_TIMEOUT_S, "the coordinator to answer")
            for n in range(args.providers):
                name = f"provider-{n}"
                token = network.create_provider_token(name)
                provider = network.spawn(
                    name,
                    "provider",
                    "serve",
                    "--coordinator",
                    network.base_url,
                    "--model",
                    args.model,
                    "--data-dir",
                    str(network.root / name),
                    env={"MOONFLOWER_PROVIDER_TOKEN": token},
                )
                wait_until(
                    lambda p=provider: bool(REGISTERED.search(p.log())) or not p.is_running,
                    STARTUP_TIMEOUT_S,
                    f"{name} to register",
                )
            print(
                f"Moonflower cluster: {args.workers} coordinator replicas at "
                f"{network.base_url}, {args.providers} provider(s), PostgreSQL at "
                f"127.0.0.1:{postgres.port}, Redis at 127.0.0.1:{redis.port}.\n"
                f"API key (with $100): {key}\n"
                f"Try: curl {network.base_url}/v1/chat/completions "
                f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
                """-d '{"model": "smollm2-135m-instruct", "messages": """
                """[{"role": "user", "content": "Hello"}]}'\n"""
                f"Logs: {root}/*.log. Ctrl-C stops the cluster.",
                flush=True,
            )
            while not stopped and all(p.is_running for p in network.processes):
                time.sleep(0.5)
            for process in network.processes:
                if not process.is_running and not stopped:
                    print(f"{process.name} exited:\n{process.log()[-2000:]}", file=sys.stderr)
        finally:
            network.stop()


if __name__ == "__main__":
    main()
