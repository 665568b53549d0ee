"""`logs.configure`: the command line's log lines go to whatever stderr is at the time."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from moonflower.cli import logs


def test_a_closed_stand_in_for_stderr_leaves_no_handler_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = logging.getLogger("moonflower.test_logs")
    stand_in = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stand_in)
    logs.configure("info")
    log.info("while swapped")
    assert "while swapped" in stand_in.getvalue()
    stand_in.close()

    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    log.info("after")
    assert "after" in later.getvalue()
    assert "Logging error" not in later.getvalue()
