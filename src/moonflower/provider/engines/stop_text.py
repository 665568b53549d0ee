"""Streamed model output to safe-to-send text: UTF-8 reassembly and stop-sequence holdback.

An engine pushes each token's bytes into a `TextStream` and gets back the text that is safe to
send now. Bytes of a character split across tokens wait for the rest of the character; text
is held back only while it could still be the start of a stop string; once a stop string
appears, the text before it is released and everything from the stop string on is dropped.

This module is pure data logic: it must not know about tokens, tokenizers or models.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a push released: `text` may be sent now; `stop` is the stop string that matched,
    if one did (after which the scanner accepts no more text)."""

    text: str
    stop: str | None = None


class StopTextScanner:
    """Finds the first occurrence of any stop string in a stream of text pieces."""

    def __init__(self, stops: Iterable[str]) -> None:
        # Empty stop strings would match everywhere; they mean nothing, so they are dropped.
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._pending = ""
        self._stopped: str | None = None

    @property
    def stopped(self) -> str | None:
        """The stop string that ended the stream, if one did."""
        return self._stopped

    def push(self, piece: str) -> ScanResult:
        """Add `piece`; return the text that can no longer be part of a stop string."""
        if self._stopped is not None:
            return ScanResult("", self._stopped)
        pending = self._pending + piece
        match = earliest_stop(pending, self._stops)
        if match is not None:
            index, stop = match
            self._pending = ""
            self._stopped = stop
            return ScanResult(pending[:index], stop)
        keep = held_back_length(pending, self._stops)
        cut = len(pending) - keep
        self._pending = pending[cut:]
        return ScanResult(pending[:cut])

    def flush(self) -> str:
        """Release whatever is held back (the stream ended without a stop string)."""
        rest, self._pending = self._pending, ""
        return rest


def earliest_stop(text: str, stops: Iterable[str]) -> tuple[int, str] | None:
    """The position and value of the stop string that starts first in `text` (the longest
    one when several start at the same place), or None."""
    best: tuple[int, str] | None = None
    for stop in stops:
        index = text.find(stop)
        if index < 0:
            continue
        if best is None or index < best[0] or (index == best[0] and len(stop) > len(best[1])):
            best = (index, stop)
    return best


def held_back_length(text: str, stops: Iterable[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string:
    the only part that a later piece could still turn into a match."""
    longest = 0
    for stop in stops:
        limit = min(len(stop) - 1, len(text))
        for size in range(limit, longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """Token bytes in, sendable text out (UTF-8 reassembly, then stop-string scanning)."""

    def __init__(self, stops: Iterable[str]) -> None:
        # "replace": bytes that can never become valid UTF-8 show as U+FFFD rather than
        # vanish; an incomplete sequence is only held, never replaced, until the end.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._scanner = StopTextScanner(stops)

    @property
    def stopped(self) -> str | None:
        return self._scanner.stopped

    def push(self, piece: bytes) -> ScanResult:
        return self._scanner.push(self._decoder.decode(piece))

    def flush(self) -> str:
        """Release the held-back text. A character cut off by the end of generation is
        dropped: its bytes alone are not text."""
        return self._scanner.flush()
