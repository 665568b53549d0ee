"""The processes `benchmarks.gateway_overhead` measures: the synthetic upstream, LiteLLM's
proxy in front of it, and a Moonflower coordinator with synthetic providers. Each is a
context manager that starts its processes on free loopback ports, waits (bounded) until
they answer, and stops them on exit.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.network import LocalNetwork, free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
LITELLM_VENV = Path(__file__).resolve().parent / ".venvs" / "litellm"
LITELLM_INSTALL_TIMEOUT_S = 900.0
STARTUP_TIMEOUT_S = 120.0
SYNTHETIC_PROVIDERS = {"MIN_TRUST": "none", "ALLOW_ANONYMOUS_PROVIDERS": "true"}
"""Coordinator settings for synthetic providers: they present no token and no statement."""


@dataclass
class ServiceProcess:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _service(
    root: Path, name: str, argv: list[str], port: int, health_path: str, env: dict[str, str]
) -> Iterator[ServiceProcess]:
    log_path = root / f"{name}.log"
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    service = ServiceProcess(name, popen, port, log_path)
    try:
        wait_until(
            lambda: popen.poll() is not None or _answers(service.base_url + health_path),
            STARTUP_TIMEOUT_S,
            f"{name} to answer {health_path}",
        )
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{service.log_tail()}")
        yield service
    finally:
        service.stop()


@contextmanager
def start_upstream(root: Path, tokens: int, interval_ms: float) -> Iterator[ServiceProcess]:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.synthetic_upstream", "--port", str(port)]
    argv += ["--tokens", str(tokens), "--interval-ms", str(interval_ms)]
    with _service(root, "upstream", argv, port, "/health", dict(os.environ)) as service:
        yield service


def ensure_litellm() -> Path:
    """The `litellm` executable of `benchmarks/.venvs/litellm`, installing it there first
    (`pip install "litellm[proxy]"`, bounded in time) if it is missing."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.exists():
        return executable
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=120)
    pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"]
    subprocess.run(pip, check=True, timeout=LITELLM_INSTALL_TIMEOUT_S)
    return executable


@contextmanager
def start_litellm(root: Path, upstream_url: str) -> Iterator[tuple[ServiceProcess, str]]:
    """LiteLLM's proxy with the upstream as model `synthetic`: one worker, a fresh master
    key as the only credential (no database, so no virtual keys), the model cost map read
    locally (no network), logging errors only; yields the process and the master key."""
    try:
        executable = ensure_litellm()
    except subprocess.SubprocessError as exc:
        raise RuntimeError(f"installing litellm[proxy] failed: {exc}") from exc
    config = root / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: synthetic\n"
        "    litellm_params:\n"
        "      model: openai/synthetic\n"
        f"      api_base: {upstream_url}/v1\n"
        "      api_key: not-needed\n"
    )
    port = free_port()
    argv = [str(executable), "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--num_workers", "1"]
    master_key = f"sk-{secrets.token_hex(16)}"
    env = dict(os.environ)
    env.update(
        {
            "LITELLM_MASTER_KEY": master_key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True",
        }
    )
    for name in ("DATABASE_URL", "VIRTUAL_ENV"):
        env.pop(name, None)
    with _service(root, "litellm", argv, port, "/health/liveliness", env) as service:
        yield service, master_key


@contextmanager
def start_moonflower(
    root: Path, tokens: int, interval_ms: float, providers: int
) -> Iterator[tuple[str, str]]:
    """A coordinator (admitting and routing to anonymous, unattested providers) and one
    process of `providers` synthetic providers with 64 slots each; yields the base URL and a
    funded API key."""
    network = LocalNetwork(root / "moonflower", log_level="warning", settings=SYNTHETIC_PROVIDERS)
    try:
        network.start_coordinator()
        key = network.create_key("gateway-overhead", credit_usd="10000")
        argv = [sys.executable, "-m", "benchmarks.synthetic_provider"]
        argv += ["--coordinator", network.base_url, "--providers", str(providers)]
        argv += ["--slots", "64", "--tokens", str(tokens), "--interval-ms", str(interval_ms)]
        log_path = root / "synthetic_provider.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, env=network.env(), cwd=REPO
            )
        provider = ServiceProcess("synthetic_provider", popen, 0, log_path)
        try:
            wait_until(
                lambda: popen.poll() is not None or network.provider_count() >= providers,
                STARTUP_TIMEOUT_S,
                "the synthetic providers to register",
            )
            if popen.poll() is not None:
                raise RuntimeError(f"synthetic providers exited:\n{provider.log_tail()}")
            yield network.base_url, key
        finally:
            provider.stop()
    finally:
        network.stop()
