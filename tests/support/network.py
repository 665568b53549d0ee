"""Real Moonflower processes on loopback for integration tests and benchmarks.

`LocalNetwork` starts `moonflower coordinator serve` and `moonflower provider serve` as
subprocesses on free 127.0.0.1 ports, with logs written to files the tests can grep, and
stops everything it started. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def is_running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.is_running:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)


@dataclass
class LocalNetwork:
    root: Path
    database_url: str | None = None
    port: int = field(default_factory=free_port)
    log_level: str = "debug"
    processes: list[Process] = field(default_factory=list)
    coordinator: Process | None = None
    settings: dict[str, str] = field(default_factory=dict)
    """Extra `MOONFLOWER_*` environment for every process, e.g. {"MINIMUM_CHARGE_MICRO_USD":
    "1000"}."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "coordinator"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["MOONFLOWER_LOG_LEVEL"] = self.log_level
        env["MOONFLOWER_PROVIDER_LOG_LEVEL"] = self.log_level
        env.update({f"MOONFLOWER_{name}": value for name, value in self.settings.items()})
        return env

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """Run `moonflower ARGS` as `name`, with this network's environment plus `env`."""
        log_path = self.root / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                [sys.executable, "-m", "moonflower", *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**self.env(), **(env or {})},
                cwd=self.root,
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def db_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args

    def start_coordinator(self) -> Process:
        self.coordinator = self.spawn(
            "coordinator", "coordinator", "serve", "--port", str(self.port), *self.db_args()
        )
        wait_until(self.is_healthy, STARTUP_TIMEOUT_S, "the coordinator to answer /health")
        return self.coordinator

    def start_provider(
        self, name: str = "provider", model: str = "default", *extra: str
    ) -> Process:
        """Start `moonflower provider serve` and wait until it registered. Unless `extra`
        passes a `--token` or `--token-file`, the provider is enrolled first: a provider
        token of the provider account named `name` reaches it in MOONFLOWER_PROVIDER_TOKEN."""
        env: dict[str, str] = {}
        if not {"--token", "--token-file"} & set(extra):
            env["MOONFLOWER_PROVIDER_TOKEN"] = self.create_provider_token(name)
        before = self.provider_count()
        process = self.spawn(
            name,
            "provider",
            "serve",
            "--coordinator",
            self.base_url,
            "--model",
            model,
            "--data-dir",
            str(self.root / name),
            *extra,
            env=env,
        )
        wait_until(
            lambda: self.provider_count() > before or not process.is_running,
            STARTUP_TIMEOUT_S,
            f"{name} to register",
        )
        if not process.is_running:
            raise RuntimeError(f"{name} exited:\n{process.log()[-3000:]}")
        return process

    def create_key(self, account: str = "default", *, credit_usd: str | None = "100") -> str:
        """A new API key for `account` (created if missing), which is first credited
        `credit_usd` dollars unless that is None."""
        key = self.cli("keys", "create", "--account", account).strip().splitlines()[-1]
        if credit_usd is not None:
            self.cli("credit", account, credit_usd)
        return key

    def create_provider_token(self, account: str) -> str:
        """A new provider token of the provider account `account` (created if missing)."""
        created = self.cli("keys", "create", "--provider", "--account", account)
        return created.strip().splitlines()[-1]

    def cli(self, *args: str) -> str:
        """Run `moonflower ARGS` against this network's database; its standard output."""
        result = subprocess.run(
            [sys.executable, "-m", "moonflower", *args, *self.db_args()],
            capture_output=True,
            env=self.env(),
            timeout=60,
            check=True,
        )
        return result.stdout.decode()

    def health(self) -> dict[str, object] | None:
        try:
            response = httpx.get(f"{self.base_url}/health", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def is_healthy(self) -> bool:
        return self.health() is not None

    def provider_count(self) -> int:
        health = self.health()
        return int(health["providers"]) if health else 0  # type: ignore[call-overload]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.processes)
