"""How the processes run their event loop: on uvloop where it is installed (Linux and macOS
install it with the package), otherwise on asyncio's own loop. uvloop's transports write
and read sockets in C, which is most of what a relaying coordinator does per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when it is available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop (Windows)
        return asyncio.run(main)
    return uvloop.run(main)
