"""A real, throwaway PostgreSQL server for tests and benchmarks.

Owns starting a private server with `initdb`/`pg_ctl` on a free loopback port (as an
unprivileged user when running as root, since initdb refuses root), creating databases in it,
and stopping it and deleting its files afterwards. Never touches a server it did not start.

As a pytest plugin (`pytest_plugins = ["tests.support.postgres"]`) it provides:

- `postgres_server` (session): the running `PostgresServer`;
- `postgres_url` (session): a `postgresql+asyncpg://` URL of one database on it;
- `database_url` (per test, parametrised "sqlite" / "postgres"): a fresh, empty database of
  each kind; the postgres case is marked `postgres` and starts the server only when needed;
- `ledger_db` (per test): a migrated `Database` opened at `database_url`, closed afterwards.

Benchmarks and scripts use `running_postgres()` directly.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moonflower.ledger.database import Database, default_database_url

SUPERUSER = "moonflower"
_START_ATTEMPTS = 3
_INSTALL_HINT = "install PostgreSQL's server binaries, e.g. `apt-get install -y postgresql`"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) were found."""


@dataclass(frozen=True, slots=True)
class PostgresServer:
    bin_dir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SUPERUSER

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a random name unless given) and return its URL."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        command = [str(self.bin_dir / "createdb"), "-h", self.host, "-p", str(self.port)]
        subprocess.run([*command, "-U", self.user, name], check=True, env=_client_env())
        return self.url(name)


def find_postgres_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: from PATH, else the newest Debian install."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    installed = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(installed, key=_major_version, reverse=True)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return directory
    raise PostgresUnavailable(
        f"no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin; {_INSTALL_HINT}"
    )


def _major_version(bin_dir: Path) -> int:
    version = bin_dir.parent.name
    return int(version) if version.isdigit() else 0


def _client_env() -> dict[str, str]:
    # Stray PGHOST/PGUSER/PGDATABASE... from the caller's shell must not redirect us.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _scratch_parent() -> str | None:
    """RAM-backed storage when there is some: CREATE DATABASE gets ten times faster."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_account() -> pwd.struct_passwd | None:
    """The user to run the server as, or None to run it as ourselves (when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither 'postgres' nor 'nobody' exists")


def _run_as(account: pwd.struct_passwd | None, command: list[str], cwd: Path) -> None:
    options: dict[str, Any] = {}
    if account is not None:
        options = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    result = subprocess.run(
        command, cwd=cwd, env=_client_env(), capture_output=True, text=True, check=False, **options
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{result.stdout}\n{result.stderr}")


def _start(
    bin_dir: Path, account: pwd.struct_passwd | None, root: Path, port: int | None = None
) -> int:
    """Start the server on `port` (by default a free one, retrying if it was taken) and
    return the port."""
    sockets, log = root / "sockets", root / "server.log"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(log)]
    failure = RuntimeError("pg_ctl start was never attempted")
    for _ in range(_START_ATTEMPTS if port is None else 1):
        port = port or _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        try:
            _run_as(account, [*pg_ctl, "-w", "-t", "60", "-o", options, "start"], cwd=root)
        except RuntimeError as error:
            failure = error
            continue
        return port
    server_log = log.read_text(errors="replace") if log.exists() else ""
    raise RuntimeError(f"{failure}\nserver log:\n{server_log}")


@dataclass
class PostgresControl:
    """Stops and starts again (on its port) a server `restartable_postgres` runs."""

    server: PostgresServer
    account: pwd.struct_passwd | None
    root: Path

    def stop(self) -> None:
        """Stop the server now (fast shutdown: open connections are cut)."""
        stop = [str(self.server.bin_dir / "pg_ctl"), "-D", str(self.root / "data")]
        _run_as(self.account, [*stop, "-m", "fast", "-w", "stop"], cwd=self.root)

    def start(self) -> None:
        _start(self.server.bin_dir, self.account, self.root, self.server.port)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Run a private PostgreSQL server for the duration of the `with` block."""
    with restartable_postgres() as control:
        yield control.server


@contextmanager
def restartable_postgres() -> Iterator[PostgresControl]:
    """Run a private PostgreSQL server for the `with` block, which may stop and start it."""
    bin_dir = find_postgres_bin_dir()
    account = _server_account()
    with tempfile.TemporaryDirectory(prefix="moonflower-pg-", dir=_scratch_parent()) as temp:
        root = Path(temp)
        (root / "sockets").mkdir()
        if account is not None:
            for path in (root, root / "sockets"):
                os.chown(path, account.pw_uid, account.pw_gid)
        initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER]
        _run_as(account, [*initdb, "--auth=trust", "-E", "UTF8", "--no-locale", "-N"], cwd=root)
        port = _start(bin_dir, account, root)
        control = PostgresControl(PostgresServer(bin_dir=bin_dir, port=port), account, root)
        try:
            yield control
        finally:
            with contextlib.suppress(RuntimeError):  # stopped already
                control.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        find_postgres_bin_dir()
    except PostgresUnavailable as error:
        pytest.fail(f"PostgreSQL is needed for tests marked 'postgres': {error}", pytrace=False)
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database("moonflower")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_database_url(tmp_path / "data")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
async def ledger_db(database_url: str) -> AsyncIterator[Database]:
    async with await Database.open(database_url) as db:
        yield db
