"""The benchmarks' summary: reads `benchmarks/results/<name>.json` (written through
`benchmarks.results`) and writes `SUMMARY.md` beside them — machine and commit, headline
numbers, where each stands against its target, and per benchmark its JSON and the command
that produced it — and the charts in `charts/` (drawn by `benchmarks.charts` with
matplotlib from its own virtualenv, `benchmarks/.venvs/charts`, created on first use).

Targets are judged here, from the numbers; a benchmark whose JSON is absent is "not run".
This module measures nothing and never changes a results file. Usage:

    .venv/bin/python -m benchmarks.report [--results DIR] [--no-charts]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.results import results_dir
from benchmarks.run_all import BENCHMARKS

CHARTS_VENV = Path(__file__).resolve().parent / ".venvs" / "charts"
CHARTS_SCRIPT = Path(__file__).resolve().parent / "charts.py"
CHARTS_INSTALL_TIMEOUT_S = 900.0
CHARTS_DRAW_TIMEOUT_S = 300.0

GATEWAY_CONCURRENCY = 64
ADDED_TTFT_P50_MAX_MS = 2.0
ADDED_TTFT_P99_MAX_MS = 10.0
LITELLM_FRACTION_MAX = 0.25
RELAY_MIN_TOKENS_PER_S = 20_000
ENGINE_EFFICIENCY_MIN = 0.95
ENGINE_CONCURRENCY = (1, 4)
BATCHED_SETTLEMENTS_MIN_PER_S = 2_000


@dataclass(frozen=True)
class Result:
    """One benchmark's results file; provenance fields are None in files written before
    results carried it."""

    name: str
    path: Path
    report: dict[str, Any]
    command: str | None = None
    written_at: str | None = None
    commit: str | None = None
    is_dirty: bool | None = None
    machine: dict[str, Any] | None = None


@dataclass(frozen=True)
class Check:
    what: str
    goal: str
    measured: str
    status: str
    """"met", "missed", "not run" (no results file) or "no data" (not in the file)."""


def load(directory: Path, name: str) -> Result | None:
    path = directory / f"{name}.json"
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    if "report" not in document or "benchmark" not in document:
        machine = document.get("machine")
        return Result(name, path, document, machine=machine if isinstance(machine, dict) else None)
    git = document.get("git") or {}
    return Result(
        name,
        path,
        document["report"],
        command=document.get("command"),
        written_at=document.get("written_at"),
        commit=git.get("commit"),
        is_dirty=git.get("is_dirty"),
        machine=document.get("machine"),
    )


def load_all(directory: Path) -> dict[str, Result | None]:
    return {b.name: load(directory, b.name) for b in BENCHMARKS}


# What each report holds, read in one place; None where the number is not there.


def gateway_levels(result: Result | None) -> list[int]:
    rows = result.report.get("results", []) if result else []
    return sorted({row["concurrency"] for row in rows})


def gateway_added_ttft(result: Result | None, target: str, concurrency: int) -> dict[str, float]:
    for row in result.report.get("results", []) if result else []:
        if row["target"] == target and row["concurrency"] == concurrency:
            return dict(row.get("added_ttft_ms") or {})
    return {}


def relay_sustained(result: Result | None, kind: str) -> dict[str, Any] | None:
    return result.report.get(f"sustained_{kind}") if result else None


def engine_level(result: Result | None, concurrency: int) -> dict[str, float] | None:
    return result.report.get("by_concurrency", {}).get(str(concurrency)) if result else None


def ledger_rows(result: Result | None) -> list[dict[str, Any]]:
    return list(result.report.get("rows", [])) if result else []


# Targets.


def check(
    what: str,
    goal: str,
    result: Result | None,
    value: float | None,
    limit: float | None,
    *,
    is_upper: bool,
    shown: str,
) -> Check:
    """Judge `value` against `limit` (an upper bound if `is_upper`, else a lower one);
    `shown` formats the value (`str.format`)."""
    if result is None:
        return Check(what, goal, "—", "not run")
    if value is None or limit is None:
        return Check(what, goal, "—", "no data")
    is_met = value <= limit if is_upper else value >= limit
    return Check(what, goal, shown.format(value), "met" if is_met else "missed")


def gateway_checks(result: Result | None) -> list[Check]:
    ours = gateway_added_ttft(result, "moonflower", GATEWAY_CONCURRENCY)
    theirs = gateway_added_ttft(result, "litellm", GATEWAY_CONCURRENCY)
    at = f"at concurrency {GATEWAY_CONCURRENCY}"
    checks = []
    for q, limit in (("p50", ADDED_TTFT_P50_MAX_MS), ("p99", ADDED_TTFT_P99_MAX_MS)):
        value = ours.get(q)
        checks.append(
            check(
                f"Moonflower added TTFT {q} {at}",
                f"≤ {limit:g} ms",
                result,
                value,
                limit,
                is_upper=True,
                shown="{:.1f} ms",
            )
        )
    for q in ("p50", "p99"):
        value, other = ours.get(q), theirs.get(q)
        checks.append(
            check(
                f"Moonflower added TTFT {q} {at}, against LiteLLM's",
                f"≤ {LITELLM_FRACTION_MAX:g} × LiteLLM's",
                result,
                value,
                None if other is None else LITELLM_FRACTION_MAX * other,
                is_upper=True,
                shown=f"{{:.1f}} vs {other} ms{ratio_text(value, other)}",
            )
        )
    return checks


def ratio_text(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return ""
    return f" ({ours / theirs:.2f}×)"


def relay_checks(result: Result | None) -> list[Check]:
    checks = []
    for kind in ("streaming", "whole"):
        level = relay_sustained(result, kind)
        value = level.get("tokens_per_s") if level else None
        checks.append(
            check(
                f"relay, {kind} (sustained)",
                f"≥ {RELAY_MIN_TOKENS_PER_S:,} tokens/s",
                result,
                value,
                RELAY_MIN_TOKENS_PER_S,
                is_upper=False,
                shown="{:,} tokens/s",
            )
        )
    return checks


def engine_checks(result: Result | None) -> list[Check]:
    checks = []
    for concurrency in ENGINE_CONCURRENCY:
        level = engine_level(result, concurrency)
        value = level.get("network_over_direct") if level else None
        checks.append(
            check(
                f"engine efficiency, {requests(concurrency)}",
                f"≥ {ENGINE_EFFICIENCY_MIN:g}",
                result,
                value,
                ENGINE_EFFICIENCY_MIN,
                is_upper=False,
                shown="{:.3f}",
            )
        )
    return checks


def settlement_checks(result: Result | None) -> list[Check]:
    """The best batched rate on PostgreSQL, at whichever concurrency reached it."""
    rows = result.report.get("batching", {}).get("rows", []) if result else []
    rates = [r["settler_batched_per_s"] for r in rows if r.get("backend") == "postgresql"]
    return [
        check(
            "settlements in batches, PostgreSQL",
            f"≥ {BATCHED_SETTLEMENTS_MIN_PER_S:,} /s",
            result,
            max(rates, default=None),
            BATCHED_SETTLEMENTS_MIN_PER_S,
            is_upper=False,
            shown="{:,.0f} /s",
        )
    ]


def checks(results: dict[str, Result | None]) -> list[Check]:
    return [
        *gateway_checks(results.get("gateway_overhead")),
        *relay_checks(results.get("relay")),
        *engine_checks(results.get("throughput")),
        *settlement_checks(results.get("settlements")),
    ]


# SUMMARY.md.


def ms_pair(values: dict[str, float]) -> str:
    if "p50" not in values or "p99" not in values:
        return "—"
    return f"{values['p50']:+.1f} / {values['p99']:+.1f}"


def gateway_table(result: Result | None) -> list[str]:
    if result is None:
        return ["Gateway overhead: not run."]
    rows = []
    for concurrency in gateway_levels(result):
        ours = gateway_added_ttft(result, "moonflower", concurrency)
        theirs = gateway_added_ttft(result, "litellm", concurrency)
        ratios = " / ".join(
            ratio_text(ours.get(q), theirs.get(q)).strip(" ()") or "n/a" for q in ("p50", "p99")
        )
        rows.append((str(concurrency), ms_pair(ours), ms_pair(theirs), ratios))
    head = ("concurrency", "Moonflower p50 / p99", "LiteLLM p50 / p99", "ratio p50 / p99")
    return [
        "Gateway overhead — TTFT added over the direct upstream (ms), and Moonflower's added "
        "TTFT over LiteLLM's:",
        "",
        *table(head, rows),
    ]


def headline_rows(results: dict[str, Result | None]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    relay = results.get("relay")
    for kind in ("streaming", "whole"):
        level = relay_sustained(relay, kind)
        value = (
            f"{level['tokens_per_s']:,} tokens/s at concurrency {level['concurrency']}"
            if level
            else not_run(relay)
        )
        rows.append((f"relay, sustained {kind}", value))
    throughput = results.get("throughput")
    for concurrency in ENGINE_CONCURRENCY:
        engine = engine_level(throughput, concurrency)
        value = (
            f"{engine['network_over_direct']:.3f} (network {engine['network_tokens_per_s']}, "
            f"direct {engine['direct_tokens_per_s']} tokens/s)"
            if engine
            else not_run(throughput)
        )
        rows.append((f"engine efficiency (network / direct), {requests(concurrency)}", value))
    settlements = results.get("settlements")
    for row in ledger_rows(settlements):
        rows.append(
            (
                f"ledger reserve + settle, {row['backend']}, concurrency {row['concurrency']}",
                f"{row['reserve_and_settle_per_s']:.0f} /s",
            )
        )
    if not ledger_rows(settlements):
        rows.append(("ledger reserve + settle", not_run(settlements)))
    return rows + provider_rows(results)


def provider_rows(results: dict[str, Result | None]) -> list[tuple[str, str]]:
    concurrency, scale = results.get("concurrency"), results.get("scale")
    levels = concurrency.report.get("levels", {}) if concurrency else {}
    top = max(levels, key=int, default=None)
    provider = (
        f"{levels[top]['aggregate_tokens_per_s']} tokens/s at {requests(int(top))}, "
        f"{levels[top]['aggregate_over_1']}× one request's"
        if top
        else not_run(concurrency)
    )
    report = scale.report if scale else {}
    fleet = (
        f"{report['errors']} errors, {report['requests_per_s']:.0f} requests/s, pick p99 "
        f"{report['routing'].get('p99_ms') or 0:.2f} ms, "
        f"{report['kib_per_provider']} KiB per provider"
        if "errors" in report
        else not_run(scale)
    )
    return [("one provider, aggregate", provider), ("scale (1 coordinator, many providers)", fleet)]


def not_run(result: Result | None) -> str:
    return "not run" if result is None else "no data"


def header(results: dict[str, Result | None]) -> list[str]:
    present = [r for r in results.values() if r is not None]
    machines = [r.machine for r in sorted(present, key=lambda r: r.written_at or "") if r.machine]
    lines = ["# Benchmark results", "", "Written by `.venv/bin/python -m benchmarks.report`."]
    if machines:
        lines += ["", f"Machine: {machine_text(machines[-1])}."]
    commits = sorted({commit_text(r) for r in present if r.commit})
    if len(commits) == 1:
        lines.append(f"Commit: {commits[0]}.")
    elif commits:
        lines.append(f"Commits: {', '.join(commits)} (each benchmark's is given below).")
    return lines


def machine_text(machine: dict[str, Any]) -> str:
    cores = machine.get("logical_cores") or machine.get("cores")
    parts = [
        machine.get("cpu"),
        cores and f"{cores} logical cores",
        machine.get("memory_gib") and f"{machine['memory_gib']} GiB memory",
        machine.get("os"),
        machine.get("python") and f"Python {machine['python']}",
    ]
    return ", ".join(str(part) for part in parts if part)


def requests(count: int) -> str:
    return f"{count} concurrent request" + ("" if count == 1 else "s")


def commit_text(result: Result) -> str:
    if not result.commit:
        return "not recorded"
    return f"`{result.commit[:12]}`" + (" (work tree modified)" if result.is_dirty else "")


def benchmark_sections(results: dict[str, Result | None]) -> list[str]:
    lines = ["## Each benchmark"]
    for benchmark in BENCHMARKS:
        result = results.get(benchmark.name)
        lines += ["", f"### `{benchmark.name}` — {benchmark.title}", ""]
        if result is None:
            lines.append(f"Not run. Documented command: `{benchmark.command}`")
            continue
        lines.append(f"Results: [{result.path.name}]({result.path.name})")
        if result.command is None:
            lines.append(
                "(written before results recorded their command, commit and machine; "
                f"documented command: `{benchmark.command}`)"
            )
            continue
        load_avg = (result.machine or {}).get("load_average_at_start")
        lines += [
            f"- command: `{result.command}`",
            f"- written {result.written_at}, commit {commit_text(result)}"
            + (f", load average at start {' / '.join(map(str, load_avg))}" if load_avg else ""),
        ]
    return lines


def table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def summary(results: dict[str, Result | None], charts: list[str], charts_note: str) -> str:
    lines = [*header(results), "", "## Headline", "", *gateway_table(results["gateway_overhead"])]
    lines += ["", *table(("measure", "value"), headline_rows(results))]
    lines += ["", "## Targets", ""]
    lines += table(
        ("target", "goal", "measured", "status"),
        [(c.what, c.goal, c.measured, f"**{c.status}**") for c in checks(results)],
    )
    lines += ["", "## Charts", ""]
    lines += [f"![{name}](charts/{name})" for name in charts] or [charts_note]
    lines += ["", *benchmark_sections(results)]
    return "\n".join(lines) + "\n"


# Charts: the numbers go to `benchmarks.charts` as JSON on its standard input.


def chart_data(results: dict[str, Result | None]) -> dict[str, Any]:
    gateway, relay = results["gateway_overhead"], results["relay"]
    throughput, concurrency = results["throughput"], results["concurrency"]
    return {
        "gateway": [
            {k: row[k] for k in ("target", "concurrency", "ttft_ms", "total_ms", "added_ttft_ms")}
            for row in (gateway.report.get("results", []) if gateway else [])
        ],
        "relay": {kind: relay.report.get(kind, []) for kind in ("streaming", "whole")}
        if relay
        else {},
        "relay_target": RELAY_MIN_TOKENS_PER_S,
        "engine": throughput.report.get("by_concurrency", {}) if throughput else {},
        "engine_target": ENGINE_EFFICIENCY_MIN,
        "ledger": ledger_rows(results["settlements"]),
        "concurrency": concurrency.report.get("levels", {}) if concurrency else {},
    }


def ensure_matplotlib() -> Path:
    """The python of `benchmarks/.venvs/charts`, with matplotlib installed into it first
    (bounded in time) if it is not there yet."""
    python = CHARTS_VENV / "bin" / "python"
    probe = [str(python), "-c", "import matplotlib"]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(CHARTS_VENV)], check=True, timeout=120)
    pip = [str(python), "-m", "pip", "install", "-q", "matplotlib"]
    subprocess.run(pip, check=True, timeout=CHARTS_INSTALL_TIMEOUT_S)
    return python


def draw_charts(results: dict[str, Result | None], out: Path) -> list[str]:
    """Draw the charts into `out` (replacing the PNGs there); the file names drawn."""
    python = ensure_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    done = subprocess.run(
        [str(python), str(CHARTS_SCRIPT), str(out)],
        input=json.dumps(chart_data(results)),
        capture_output=True,
        text=True,
        check=True,
        timeout=CHARTS_DRAW_TIMEOUT_S,
    )
    return done.stdout.split()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write SUMMARY.md and the charts from the benchmarks' results."
    )
    parser.add_argument("--results", type=Path, default=None, help="the results directory")
    parser.add_argument("--no-charts", action="store_true")
    args = parser.parse_args(argv)
    directory: Path = args.results or results_dir()
    results = load_all(directory)
    charts: list[str] = []
    note = "Not drawn (--no-charts)."
    is_failed = False
    if not args.no_charts:
        try:
            charts = draw_charts(results, directory / "charts")
            note = "No data to chart."
        except (OSError, subprocess.SubprocessError) as exc:
            is_failed = True
            note = f"Not drawn: {exc}"
            print(f"charts not drawn: {exc}\n{getattr(exc, 'stderr', '')}", file=sys.stderr)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "SUMMARY.md"
    path.write_text(summary(results, charts, note))
    print(f"wrote {path}", *(f"charts/{name}" for name in charts))
    if is_failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
