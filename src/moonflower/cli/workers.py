"""`moonflower coordinator serve --workers N`: N coordinator replicas on one machine behind
one port, each a process with its own event loop.

The parent binds the public socket once and hands it to every worker, whose kernel-balanced
`accept`s share the connections; each worker also listens on a port of its own, where the
other replicas reach it (`coordinator/forwarding.py`), and they share their live state through
Redis. The parent only supervises: a worker that dies is started again (its providers
reconnect through the public port to the living ones meanwhile), and SIGTERM or Ctrl-C is
passed to every worker, each of which drains as a single coordinator would.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0
"""How long the parent waits before starting a worker again after it died."""
SUPERVISE_EVERY_S = 0.2
STOP_WITHIN_S = 15.0
"""After the workers' own drain deadline, how long the parent waits before killing them."""
LISTEN_FD_OPTION = "--listen-fd"


def public_socket(settings: CoordinatorSettings) -> socket.socket:
    """The listening socket every worker accepts on, inheritable by them."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def worker_argv(argv: list[str], fd: int) -> list[str]:
    """This command's arguments for one worker: without `--workers`, with the socket's fd."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return [sys.executable, "-m", "moonflower", *kept, LISTEN_FD_OPTION, str(fd)]


def run_workers(count: int, settings: CoordinatorSettings) -> int:
    """Run `count` workers until a signal stops them; the exit code."""
    sock = public_socket(settings)
    argv = worker_argv(sys.argv[1:], sock.fileno())
    workers: list[subprocess.Popen[bytes] | None] = [None] * count
    stopping = False

    def start(index: int) -> None:
        workers[index] = subprocess.Popen(argv, pass_fds=(sock.fileno(),))
        log.info("worker %d started (pid %d)", index, workers[index].pid)  # type: ignore[union-attr]

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(count):
        start(index)
    restart_at: dict[int, float] = {}
    while not stopping:
        time.sleep(SUPERVISE_EVERY_S)
        for index, worker in enumerate(workers):
            if stopping or worker is None or worker.poll() is None:
                continue
            due = restart_at.setdefault(index, time.monotonic() + RESTART_PAUSE_S)
            if time.monotonic() >= due:
                log.warning(
                    "worker %d (pid %d) ended (%s); starting it again",
                    index,
                    worker.pid,
                    worker.returncode,
                )
                del restart_at[index]
                start(index)
    deadline = time.monotonic() + settings.shutdown_grace_s + STOP_WITHIN_S
    for worker in workers:
        if worker is None:
            continue
        try:
            worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    sock.close()
    return 0


def worker_sockets(
    settings: CoordinatorSettings, listen_fd: int
) -> tuple[list[socket.socket], CoordinatorSettings]:
    """For a worker: the public socket it was handed and a port of its own, with settings
    naming that port as where the other replicas reach it (`replica_url`'s scheme and host
    if one is set, else the host it serves on)."""
    public = socket.socket(fileno=listen_fd)
    family = public.family
    own = socket.create_server((settings.host, 0), family=family, backlog=2048)
    port = own.getsockname()[1]
    base = settings.replica_url or settings.model_copy(update={"port": port}).reachable_url
    if settings.replica_url:
        base = f"{base.rstrip('/')}:{port}"
    return [public, own], settings.model_copy(update={"replica_url": base, "port": port})
