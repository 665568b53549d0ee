"""Process-wide logging set-up for the command line; called once at a process edge."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


class _CurrentStderr(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a record is emitted, not to the stream it was
    when logging was set up: a caller that swapped stderr for a while (a test runner, an
    embedding program) and closed its stand-in leaves no handler writing to a closed file."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(level: str, *, access_log: str = "text") -> None:
    logging.basicConfig(
        level=level.upper(),
        handlers=[_CurrentStderr()],
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    access = logging.getLogger("moonflower.access")
    access.handlers.clear()
    access.propagate = access_log != "json"
    if access_log == "json":  # each line one JSON object, for log shippers
        plain = _CurrentStderr()
        plain.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(plain)
    # Third-party loggers stay quieter than ours; access logs carry paths, never bodies.
    for name in ("websockets", "httpx", "httpcore", "aiosqlite", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def progress(message: str) -> None:
    """A line of feedback for a person waiting at the terminal."""
    print(f"› {message}", file=sys.stderr, flush=True)
