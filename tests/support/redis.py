"""A real, throwaway Redis server for tests and benchmarks.

Owns starting a private `redis-server` on a free loopback port (bound to 127.0.0.1 only, no
persistence, its own temporary directory), stopping it and starting it again on the same port
or freezing it (a test can take Redis away mid-run and bring it back), and deleting its files
afterwards. Never touches a server it did not start.

As a pytest plugin (`pytest_plugins = ["tests.support.redis"]`) it provides:

- `redis_server` (session): the `RedisServer`, started when a test first needs it;
- `redis_url` (per test): the server's URL, the server running again if a test stopped it;
- `redis_prefix` (per test): a key prefix of its own, so tests never see each other's keys.

Tests that use `redis_server` are marked `redis`. Benchmarks and scripts use
`running_redis()` directly.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_START_ATTEMPTS = 3
_READY_WITHIN_S = 20.0
_STOP_WITHIN_S = 10.0
_POLL_S = 0.01
_INSTALL_HINT = "install Redis, e.g. `apt-get install -y redis-server`"


class RedisUnavailable(RuntimeError):
    """No `redis-server` binary was found."""


def find_redis_server() -> Path:
    """The `redis-server` binary: from PATH, else Debian's."""
    on_path = shutil.which("redis-server")
    candidates = [Path(on_path)] if on_path else []
    candidates.append(Path("/usr/bin/redis-server"))
    for binary in candidates:
        if binary.is_file():
            return binary
    raise RedisUnavailable(f"no redis-server on PATH or in /usr/bin; {_INSTALL_HINT}")


class RedisServer:
    """One private `redis-server` process, which may be stopped and started again; its port
    is chosen on the first start and kept, so clients built with its URL reach it again."""

    host = "127.0.0.1"

    def __init__(self, binary: Path, root: Path) -> None:
        self._binary = binary
        self._root = root
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Redis server was never started")
        return self._port

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def url(self, database: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (on its earlier port, if it ran before) and return once it
        answers PING. A first start retries on another port if the chosen one was taken."""
        if self.is_running:
            return
        if self._port is not None:
            self._launch(self._port)
            return
        failure = RuntimeError("redis-server was never started")
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            try:
                self._launch(port)
            except RuntimeError as error:
                failure = error
                continue
            self._port = port
            return
        raise failure

    def stop(self) -> None:
        """Stop the server (SIGTERM; it saves nothing) and wait until it has exited."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_WITHIN_S)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the server (SIGSTOP) for the `with` block: it still accepts connections
        but answers nothing, as a server that hangs does."""
        process = self._process
        if process is None:
            raise RuntimeError("the Redis server is not running")
        process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.send_signal(signal.SIGCONT)

    def _launch(self, port: int) -> None:
        log = self._root / "server.log"
        command = [
            str(self._binary),
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._root),
            "--logfile", str(log),
            "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=self._root
        )
        deadline = time.monotonic() + _READY_WITHIN_S
        while not _answers_ping(self.host, port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                server_log = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(
                    f"redis-server on port {port} did not answer PING:\n{server_log}"
                )
            time.sleep(_POLL_S)
        self._process = process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """Run a private Redis server for the duration of the `with` block."""
    binary = find_redis_server()
    with tempfile.TemporaryDirectory(prefix="moonflower-redis-") as temp:
        server = RedisServer(binary, Path(temp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        find_redis_server()
    except RedisUnavailable as error:
        pytest.fail(f"Redis is needed for tests marked 'redis': {error}", pytrace=False)
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.start()  # a test before this one may have left it stopped
    return redis_server.url()


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:16]}:"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
