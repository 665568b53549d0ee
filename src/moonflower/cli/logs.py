"""Process-wide logging set-up for the command line; called once at a process edge."""

from __future__ import annotations

import logging
import sys


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    # Third-party loggers stay quieter than ours; access logs carry paths, never bodies.
    for name in ("websockets", "httpx", "httpcore", "aiosqlite", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def progress(message: str) -> None:
    """A line of feedback for a person waiting at the terminal."""
    print(f"› {message}", file=sys.stderr, flush=True)
