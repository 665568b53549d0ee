"""`<data_dir>/provider-status.json`: what a running `provider serve` is doing, for
`moonflower provider status` to read from another process.

`provider serve` rewrites it every `EVERY_S` while it runs (atomically: a reader never sees
half a file) and deletes it when it stops; a file whose process is gone, or that was not
rewritten for a while, says the provider is not running. Holds no token, no prompt and no
key: the coordinator's URL, the provider's id and trust level, its models, slots and job
counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moonflower.provider.agent import ProviderAgent

STATUS_FILE = "provider-status.json"
EVERY_S = 1.0
STALE_S = 30.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    pid: int
    started_at: float
    updated_at: float
    coordinator: str | None
    provider_id: str | None
    trust_level: str | None
    models: list[dict[str, object]]
    slots: int
    active_jobs: int
    jobs_served: int
    tokens_generated: int
    is_draining: bool


def snapshot(agent: ProviderAgent, started_at: float) -> Snapshot:
    card = agent.engine.card
    connected = agent.is_connected.is_set()
    return Snapshot(
        pid=os.getpid(),
        started_at=started_at,
        updated_at=time.time(),
        coordinator=agent.coordinator_url if connected else None,
        provider_id=agent.provider_id if connected else None,
        trust_level=agent.trust_level if connected else None,
        models=[{"id": card.id, "context_length": card.context_length, "sha256": card.sha256}],
        slots=agent.engine.max_concurrent_jobs,
        active_jobs=agent.runner.active_jobs,
        jobs_served=agent.runner.jobs_served,
        tokens_generated=agent.runner.tokens_generated,
        is_draining=agent.is_draining,
    )


def write(data_dir: Path, snap: Snapshot) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STATUS_FILE
    partial = path.with_name(f".{STATUS_FILE}.{snap.pid}.partial")
    partial.write_text(json.dumps(asdict(snap), indent=2) + "\n")
    os.replace(partial, path)


async def keep_written(agent: ProviderAgent, data_dir: Path) -> None:
    """Rewrite the status file until cancelled, then remove it."""
    started_at = time.time()
    try:
        while True:
            await asyncio.to_thread(write, data_dir, snapshot(agent, started_at))
            await asyncio.sleep(EVERY_S)
    finally:
        remove(data_dir)


def remove(data_dir: Path) -> None:
    (data_dir / STATUS_FILE).unlink(missing_ok=True)


def read(data_dir: Path) -> Snapshot | None:
    """The running provider's status, or None if none is running (no file, its process
    gone, or not rewritten for `STALE_S`)."""
    try:
        raw = json.loads((data_dir / STATUS_FILE).read_text())
        snap = Snapshot(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if time.time() - snap.updated_at > STALE_S or not _is_alive(snap.pid):
        return None
    return snap


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
