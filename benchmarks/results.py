"""Where a benchmark's results go: `benchmarks/results/<name>.json`, its report wrapped with
what produced it — the benchmark, the exact command line, when, the git commit, the
machine with its load at the start of the run, and the version of every installed package.

Every file has the same shape, so `benchmarks.report` can read them all:

    {"benchmark": "relay", "command": ".venv/bin/python -m benchmarks.relay ...",
     "started_at": "...Z", "written_at": "...Z", "git": {"commit": "...", "is_dirty": false},
     "machine": {...}, "dependencies": {"fastapi": "0.165.0", ...},
     "fast_paths": {"uvloop": true, "httptools": true, "websockets.speedups": true},
     "report": {<the benchmark's own report, keys untouched>}}

A benchmark calls `Run.start(name)` first thing in `main()` (so the load average is the
machine's before the benchmark loads it) and `run.write(report)` last. This module only
records; it measures nothing and reads no results back.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_DIR_VARIABLE = "MOONFLOWER_BENCHMARK_RESULTS"
"""Overrides where results are written (a scratch directory for trial runs)."""


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_DIR_VARIABLE) or RESULTS_DIR)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def command_line(name: str, argv: list[str]) -> str:
    """The command as the README documents it, whatever path Python was started with."""
    return shlex.join([".venv/bin/python", "-m", f"benchmarks.{name}", *argv[1:]])


def git_state() -> dict[str, Any]:
    """HEAD and whether the work tree differs from it; results files themselves do not
    count, since a run of several benchmarks writes them one after another."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return {
        "commit": git("rev-parse", "HEAD"),
        "is_dirty": bool(status) if status is not None else None,
    }


def _proc_field(path: str, key: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), None)


def describe_machine() -> dict[str, Any]:
    mem_kib = _proc_field("/proc/meminfo", "MemTotal")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "memory_gib": round(int(mem_kib.split()[0]) / 2**20, 1) if mem_kib else None,
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": load,
    }


def installed_versions() -> dict[str, str]:
    """Every distribution installed beside Moonflower, by name: what the numbers were
    measured with (`constraints.txt` says what an install should hold)."""
    versions = {
        dist.metadata["Name"]: dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    }
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


COMPILED_FAST_PATHS = ("uvloop", "httptools", "websockets.speedups")
"""Compiled modules the relay runs faster with, each with a pure-Python fallback that works
without them: measured at 3b397cf on 2 cores, streamed tokens/s at 4 streams fell from
14,600 to 12,300 without `websockets.speedups`, to 11,400 without `httptools`, and to
10,000 without all three."""


def fast_paths() -> dict[str, bool]:
    """Which of `COMPILED_FAST_PATHS` this environment can import."""
    return {name: importlib.util.find_spec(name) is not None for name in COMPILED_FAST_PATHS}


@dataclass(frozen=True)
class Run:
    """One run of benchmark `name`: what is known at its start, until it writes."""

    name: str
    command: str
    started_at: str
    machine: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, name: str, *, module: str | None = None) -> Run:
        """`module`: the benchmark's module when `name` (its results file) differs."""
        command = command_line(module or name, sys.argv)
        return cls(name, command, utc_now(), describe_machine())

    def write(self, report: dict[str, Any], directory: Path | None = None) -> Path:
        """Write `report` with its provenance to `<directory>/<name>.json`; return the path."""
        document = {
            "benchmark": self.name,
            "command": self.command,
            "started_at": self.started_at,
            "written_at": utc_now(),
            "git": git_state(),
            "machine": self.machine,
            "dependencies": installed_versions(),
            "fast_paths": fast_paths(),
            "report": report,
        }
        path = (directory or results_dir()) / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path
