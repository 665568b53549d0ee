"""The benchmark summary: targets judged from the numbers in the results files, absent
files reported as not run, and the commands run_all runs documented in the README."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.results import Run, command_line
from benchmarks.run_all import BENCHMARKS

README = Path(__file__).resolve().parents[2] / "benchmarks" / "README.md"


def write(directory: Path, name: str, body: dict[str, Any]) -> None:
    run = Run(name, f".venv/bin/python -m benchmarks.{name}", "2026-11-26T00:00:00Z", {})
    run.write(body, directory)


def gateway_row(target: str, concurrency: int, added_p50: float, added_p99: float) -> Any:
    added = {} if target == "direct" else {"p50": added_p50, "p95": 0.0, "p99": added_p99}
    latency = {"p50": 10.0, "p95": 20.0, "p99": 30.0}
    return {
        "target": target,
        "concurrency": concurrency,
        "ttft_ms": latency,
        "total_ms": latency,
        "added_ttft_ms": added,
    }


def gateway(moonflower: tuple[float, float], litellm: tuple[float, float]) -> dict[str, Any]:
    return {
        "results": [
            gateway_row("direct", 64, 0, 0),
            gateway_row("litellm", 64, *litellm),
            gateway_row("moonflower", 64, *moonflower),
        ]
    }


def relay(streaming: int, whole: int) -> dict[str, Any]:
    def level(tokens: int) -> dict[str, Any]:
        return {"concurrency": 4, "tokens_per_s": tokens, "errors": 0}

    return {
        "streaming": [level(streaming)],
        "whole": [level(whole)],
        "sustained_streaming": level(streaming),
        "sustained_whole": level(whole),
    }


def throughput(**ratios: float) -> dict[str, Any]:
    return {
        "by_concurrency": {
            level.lstrip("c"): {
                "direct_tokens_per_s": 100.0,
                "network_tokens_per_s": 100.0 * ratio,
                "network_over_direct": ratio,
            }
            for level, ratio in ratios.items()
        }
    }


def settlements(**batched: list[float]) -> dict[str, Any]:
    rows = [
        {"backend": backend, "concurrency": 8 * n, "settler_batched_per_s": rate}
        for backend, rates in batched.items()
        for n, rate in enumerate(rates)
    ]
    return {"rows": [], "batching": {"rows": rows}}


def statuses(directory: Path) -> dict[str, str]:
    return {check.what: check.status for check in report.checks(report.load_all(directory))}


def test_targets_are_met_or_missed_from_the_numbers(tmp_path: Path) -> None:
    write(tmp_path, "gateway_overhead", gateway(moonflower=(1.5, 12.0), litellm=(10.0, 40.0)))
    write(tmp_path, "relay", relay(streaming=25_000, whole=15_000))
    write(tmp_path, "throughput", throughput(c1=0.96, c4=0.9))

    assert statuses(tmp_path) == {
        "Moonflower added TTFT p50 at concurrency 64": "met",
        "Moonflower added TTFT p99 at concurrency 64": "missed",
        "Moonflower added TTFT p50 at concurrency 64, against LiteLLM's": "met",
        "Moonflower added TTFT p99 at concurrency 64, against LiteLLM's": "missed",
        "relay, streaming (sustained)": "met",
        "relay, whole (sustained)": "missed",
        "engine efficiency, 1 concurrent request": "met",
        "engine efficiency, 4 concurrent requests": "missed",
        "settlements in batches, PostgreSQL": "not run",
    }


def test_a_target_on_its_limit_is_met(tmp_path: Path) -> None:
    write(tmp_path, "gateway_overhead", gateway(moonflower=(2.0, 10.0), litellm=(8.0, 40.0)))
    write(tmp_path, "relay", relay(streaming=20_000, whole=20_000))
    write(tmp_path, "throughput", throughput(c1=0.95, c4=0.95))
    write(tmp_path, "settlements", settlements(postgresql=[900.0, 2_000.0], sqlite=[9_999.0]))

    assert set(statuses(tmp_path).values()) == {"met"}


def test_missing_files_are_not_run_and_missing_levels_are_no_data(tmp_path: Path) -> None:
    only_low = {"results": [gateway_row("direct", 1, 0, 0), gateway_row("moonflower", 1, 1, 1)]}
    write(tmp_path, "gateway_overhead", only_low)
    write(tmp_path, "throughput", throughput(c1=0.99))

    found = statuses(tmp_path)

    assert {s for what, s in found.items() if what.startswith("Moonflower")} == {"no data"}
    assert found["relay, streaming (sustained)"] == "not run"
    assert found["engine efficiency, 1 concurrent request"] == "met"
    assert found["engine efficiency, 4 concurrent requests"] == "no data"
    assert found["settlements in batches, PostgreSQL"] == "not run"


def test_batched_settlements_are_judged_on_postgresql_only(tmp_path: Path) -> None:
    write(tmp_path, "settlements", settlements(postgresql=[1_999.0], sqlite=[5_000.0]))
    assert statuses(tmp_path)["settlements in batches, PostgreSQL"] == "missed"
    write(tmp_path, "settlements", {"rows": []})  # measured before batching existed
    assert statuses(tmp_path)["settlements in batches, PostgreSQL"] == "no data"


def test_summary_of_an_empty_directory_says_every_benchmark_is_not_run(tmp_path: Path) -> None:
    report.main(["--results", str(tmp_path), "--no-charts"])

    summary = (tmp_path / "SUMMARY.md").read_text()
    for benchmark in BENCHMARKS:
        assert f"Not run. Documented command: `{benchmark.command}`" in summary
    assert "**met**" not in summary
    assert "**missed**" not in summary


def test_summary_links_each_results_file_with_its_command(tmp_path: Path) -> None:
    write(tmp_path, "relay", relay(streaming=9_000, whole=12_000))

    report.main(["--results", str(tmp_path), "--no-charts"])

    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "Results: [relay.json](relay.json)" in summary
    assert "- command: `.venv/bin/python -m benchmarks.relay`" in summary
    assert "| relay, sustained streaming | 9,000 tokens/s at concurrency 4 |" in summary


def test_a_results_file_without_provenance_is_still_read(tmp_path: Path) -> None:
    (tmp_path / "relay.json").write_text(json.dumps(relay(streaming=30_000, whole=30_000)))

    assert statuses(tmp_path)["relay, whole (sustained)"] == "met"


def test_results_record_the_documented_command_and_wrap_the_report(tmp_path: Path) -> None:
    argv = ["/somewhere/benchmarks/relay.py", "--concurrency", "4", "16"]
    run = Run("relay", command_line("relay", argv), "2026-11-26T00:00:00Z", {"cores": 2})

    document = json.loads(run.write({"streaming": []}, tmp_path).read_text())

    assert document["command"] == ".venv/bin/python -m benchmarks.relay --concurrency 4 16"
    assert document["report"] == {"streaming": []}
    assert document["benchmark"] == "relay"
    assert set(document["git"]) == {"commit", "is_dirty"}
    # The versions the numbers were measured with, as installed (constraints.txt pins them).
    assert document["dependencies"]["fastapi"] == importlib.metadata.version("fastapi")
    assert document["dependencies"]["uvicorn"] == importlib.metadata.version("uvicorn")
    assert set(document["fast_paths"]) == {"uvloop", "httptools", "websockets.speedups"}


def test_the_readme_lists_the_commands_run_all_runs_as_each_section_documents_them() -> None:
    readme = README.read_text()
    top = readme.split("## Running them all")[1].split("\n## ")[0]
    blocks = re.findall(r"```sh\n(.*?)```", top, re.DOTALL)

    assert [b.command for b in BENCHMARKS] in [block.splitlines() for block in blocks]
    for benchmark in BENCHMARKS:
        section = readme.split(f"## `{benchmark.name}.py`")[1].split("\n## ")[0]
        assert f"{benchmark.command}\n" in section
        assert f"Results: `benchmarks/results/{benchmark.name}.json`." in section
