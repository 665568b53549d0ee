"""`provider doctor`'s checks: each says whether one thing a provider needs holds, and if
not, how to fix it.

The checks run in order and share what earlier ones found (the model, the engine, the
coordinator's answer); a check that cannot run because an earlier one failed says so and is
skipped rather than failed twice. The registration check connects as `provider serve`
would, with this machine's token and key, reads the coordinator's verdict and trust level,
and drains at once, so no job is routed to it. Nothing here prints a token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil

from moonflower import errors, wire
from moonflower.crypto.signing import load_signer, signing_key_path
from moonflower.model_files import ModelSource, resolve_model, sha256_file
from moonflower.provider.agent import ProviderAgent
from moonflower.provider.device_login import loose_permissions
from moonflower.provider.engines import load_engine
from moonflower.provider.engines.base import Engine
from moonflower.provider.hardware import detect_hardware
from moonflower.settings import ProviderSettings

Outcome = Literal["ok", "failed", "skipped"]
MAX_CLOCK_SKEW_S = 60
"""Beyond this, challenges and statements carry times the coordinator will not accept."""
WARN_CLOCK_SKEW_S = 5
REGISTRATION_TIMEOUT_S = 20.0
HASH_CACHE_FILE = "weight-hashes.json"

Progress = Callable[[str, float], None]
"""Told what is happening and how far along (0 to 1), for a progress bar."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    outcome: Outcome
    detail: str
    fix: str | None = None


@dataclass
class Findings:
    source: ModelSource | None = None
    engine: Engine | None = None
    health: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def is_healthy(self) -> bool:
        return all(check.outcome != "failed" for check in self.checks)


def run_checks(settings: ProviderSettings, token_file: Path | None, progress: Progress) -> Findings:
    found = Findings()
    steps: list[Callable[[ProviderSettings, Findings], Check]] = [
        lambda s, f: _token(s, token_file),
        lambda s, f: _signing_key(s),
        _model,
        lambda s, f: _weights(s, f, progress),
        lambda s, f: _engine(s, f, progress),
        _coordinator,
        _protocol,
        _clock,
        _registration,
    ]
    for step in steps:
        found.checks.append(step(settings, found))
    if found.engine is not None:
        found.engine.close()
    return found


def _token(settings: ProviderSettings, token_file: Path | None) -> Check:
    if settings.token is None:
        return Check(
            "provider token",
            "failed",
            "no provider token is set",
            "run `moonflower provider login --coordinator URL`, or give --token-file",
        )
    if token_file is not None and (problem := loose_permissions(token_file)) is not None:
        return Check("provider token", "failed", problem, f"chmod 600 {token_file}")
    where = f"in {token_file}" if token_file else "from the environment"
    return Check("provider token", "ok", f"set ({where}, readable by you only)")


def _signing_key(settings: ProviderSettings) -> Check:
    path = signing_key_path(settings.data_dir)
    if not path.exists():
        return Check("signing key", "ok", f"none yet; `provider serve` makes {path} (0600)")
    if (problem := loose_permissions(path)) is not None:
        return Check("signing key", "failed", problem, f"chmod 600 {path}")
    return Check("signing key", "ok", f"{path} is readable by you only")


def _model(settings: ProviderSettings, found: Findings) -> Check:
    try:
        found.source = resolve_model(settings.model)
    except errors.ModelSourceError as exc:
        return Check(
            "model", "failed", exc.message, "give --model default, or a path to a .gguf file"
        )
    size_mb = found.source.path.stat().st_size / 1e6
    return Check("model", "ok", f"{found.source.id}: {found.source.path} ({size_mb:.0f} MB)")


def _weights(settings: ProviderSettings, found: Findings, progress: Progress) -> Check:
    source = found.source
    if source is None:
        return Check("model hash", "skipped", "no model")
    total = source.path.stat().st_size

    def report(message: str) -> None:
        percent = message.rsplit(" ", 1)[-1].rstrip("%")
        progress(f"hashing {source.path.name}", int(percent) / 100 if percent.isdigit() else 0)

    actual = sha256_file(source.path, report)
    cache = settings.data_dir / HASH_CACHE_FILE
    try:
        remembered = json.loads(cache.read_text()).get(str(source.path.resolve()), {})
    except (OSError, ValueError, AttributeError):
        remembered = {}
    claimed = remembered.get("sha256") if isinstance(remembered, dict) else None
    if claimed is not None and claimed != actual:
        return Check(
            "model hash",
            "failed",
            f"the weights hash to {actual[:16]}…, but {cache} says {str(claimed)[:16]}…: "
            "the provider would announce the wrong weights, and its receipts would not match",
            f"delete {cache} (it is rebuilt from the weights on the next start)",
        )
    return Check("model hash", "ok", f"sha256 {actual[:16]}… ({total / 1e6:.0f} MB hashed)")


def _engine(settings: ProviderSettings, found: Findings, progress: Progress) -> Check:
    if found.source is None:
        return Check("engine", "skipped", "no model")
    process = psutil.Process()
    before = process.memory_info().rss
    progress(f"loading {found.source.id}", 0.0)
    try:
        found.engine = load_engine(
            settings.engine,
            found.source,
            context_length=settings.context_length,
            slots=settings.slots,
            progress=lambda message: progress(message, 0.5),
        )
    except (errors.ProviderSetupError, MemoryError, OSError, ValueError) as exc:
        return Check(
            "engine",
            "failed",
            f"{settings.engine} cannot load the model: {exc}",
            "install moonflower[llamacpp]; if memory is short, lower --slots or --context-length",
        )
    progress(f"loaded {found.source.id}", 1.0)
    used = max(process.memory_info().rss - before, 0)
    available = psutil.virtual_memory().available
    card = found.engine.card
    detail = (
        f"{card.engine} loaded {card.id} with {settings.slots} slot(s) of context "
        f"{card.context_length}: {used / 1e6:.0f} MB for weights and KV caches, "
        f"{available / 1e6:.0f} MB still available"
    )
    if available < used // 4:
        return Check(
            "engine and memory",
            "failed",
            detail,
            "free memory, or lower --slots or --context-length",
        )
    return Check("engine and memory", "ok", detail)


def _coordinator(settings: ProviderSettings, found: Findings) -> Check:
    url = settings.coordinator[0].rstrip("/")
    try:
        response = httpx.get(f"{url}/health", timeout=5)
        response.raise_for_status()
        found.health = {**response.json(), "_date": response.headers.get("date")}
    except (httpx.HTTPError, ValueError) as exc:
        return Check(
            "coordinator",
            "failed",
            f"cannot reach {url}: {exc}",
            "check the URL (--coordinator), that the coordinator runs, and that this machine "
            "may connect out to it",
        )
    return Check("coordinator", "ok", f"{url} answers")


def _protocol(settings: ProviderSettings, found: Findings) -> Check:
    if found.health is None:
        return Check("protocol version", "skipped", "coordinator not reached")
    theirs = found.health.get("protocol_version")
    if theirs is None:
        return Check("protocol version", "ok", "the coordinator does not say (an older one)")
    if theirs != wire.PROTOCOL_VERSION:
        return Check(
            "protocol version",
            "failed",
            f"the coordinator speaks version {theirs}, this provider {wire.PROTOCOL_VERSION}",
            "upgrade whichever is older: pip install -U moonflower",
        )
    return Check("protocol version", "ok", f"both speak version {theirs}")


def _clock(settings: ProviderSettings, found: Findings) -> Check:
    date = (found.health or {}).get("_date")
    if not date:
        return Check("clock", "skipped", "the coordinator's time is unknown")
    skew = abs(time.time() - parsedate_to_datetime(date).timestamp())
    detail = f"{skew:.0f} s from the coordinator's clock"
    if skew > MAX_CLOCK_SKEW_S:
        return Check("clock", "failed", detail, "turn on time sync (timedatectl set-ntp true)")
    return Check("clock", "ok", detail + (" (a little off)" if skew > WARN_CLOCK_SKEW_S else ""))


def _registration(settings: ProviderSettings, found: Findings) -> Check:
    if found.health is None or found.engine is None or settings.token is None:
        return Check("registration", "skipped", "needs the coordinator, the engine and a token")
    try:
        trust = asyncio.run(_register_once(settings, found.engine))
    except errors.RegistrationRejected as exc:
        return Check(
            "registration",
            "failed",
            exc.message,
            "ask the coordinator's operator why (moonflower providers list)",
        )
    except TimeoutError:
        return Check(
            "registration",
            "failed",
            f"the coordinator did not accept the provider within {REGISTRATION_TIMEOUT_S:.0f} s",
            "check the coordinator's log",
        )
    return Check("registration", "ok", f"accepted, trust level {trust or 'unknown'}")


async def _register_once(settings: ProviderSettings, engine: Engine) -> str | None:
    signer = load_signer(settings.data_dir)
    agent = ProviderAgent(
        settings.model_copy(update={"coordinator": settings.coordinator[:1]}),
        engine,
        detect_hardware(signing_key=signer.public_key()),
        signer,
    )
    running = asyncio.create_task(agent.run())
    connected = asyncio.create_task(agent.is_connected.wait())
    try:
        done, _ = await asyncio.wait(
            {running, connected},
            timeout=REGISTRATION_TIMEOUT_S,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if running in done:
            running.result()  # raises RegistrationRejected
        if connected not in done:
            raise TimeoutError
        trust = agent.trust_level
        await agent.stop_gracefully(0)
        return trust
    finally:
        connected.cancel()
        running.cancel()
        await asyncio.gather(running, connected, return_exceptions=True)
