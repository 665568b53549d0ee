"""Draws the benchmark charts as PNG files. Run by `benchmarks.report` with the python of
`benchmarks/.venvs/charts` (matplotlib is not a dependency of the project), so it imports
only the standard library and matplotlib, and reads the numbers `benchmarks.report`
extracted as JSON on standard input; it never reads the results files itself. Prints the
name of each file it wrote, one per line; a chart without data is not drawn.

    <charts venv>/bin/python benchmarks/charts.py OUT_DIR < data.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

PERCENTILES = ("p50", "p95", "p99")
COLOURS = {"direct": "tab:gray", "litellm": "tab:orange", "moonflower": "tab:blue"}


def gateway_percentiles(data: dict[str, Any], path: Path) -> bool:
    """TTFT and total time percentiles, one column per concurrency, a line per target."""
    rows = data["gateway"]
    levels = sorted({row["concurrency"] for row in rows})
    if not levels:
        return False
    fig, axes = plt.subplots(2, len(levels), figsize=(3.2 * len(levels), 6), squeeze=False)
    for col, concurrency in enumerate(levels):
        for row in (r for r in rows if r["concurrency"] == concurrency):
            for line, metric in enumerate(("ttft_ms", "total_ms")):
                values = [row[metric].get(q) for q in PERCENTILES]
                axes[line][col].plot(
                    PERCENTILES,
                    values,
                    marker="o",
                    label=row["target"],
                    color=COLOURS.get(row["target"]),
                )
        axes[0][col].set_title(f"concurrency {concurrency}")
        for line, label in enumerate(("TTFT ms", "total ms")):
            axes[line][col].set_yscale("log")
            axes[line][col].grid(True, which="both", alpha=0.3)
            if col == 0:
                axes[line][col].set_ylabel(label)
    axes[0][0].legend()
    fig.suptitle("Gateway overhead: latency percentiles per target")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def gateway_added(data: dict[str, Any], path: Path) -> bool:
    """TTFT each gateway adds over direct, against concurrency."""
    rows = [r for r in data["gateway"] if r["added_ttft_ms"]]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in sorted({r["target"] for r in rows}):
        mine = sorted((r for r in rows if r["target"] == target), key=lambda r: r["concurrency"])
        for q, style in (("p50", "-"), ("p99", "--")):
            ax.plot(
                [str(r["concurrency"]) for r in mine],
                [r["added_ttft_ms"].get(q) for r in mine],
                style,
                marker="o",
                color=COLOURS.get(target),
                label=f"{target} {q}",
            )
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("added TTFT, ms")
    ax.set_title("TTFT added over the direct upstream")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def relay_throughput(data: dict[str, Any], path: Path) -> bool:
    relay = data["relay"]
    if not any(relay.get(kind) for kind in ("streaming", "whole")):
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("streaming", "o"), ("whole", "s")):
        levels = relay.get(kind) or []
        ax.plot(
            [str(lv["concurrency"]) for lv in levels],
            [lv["tokens_per_s"] for lv in levels],
            marker=marker,
            label=kind,
        )
    ax.axhline(data["relay_target"], color="tab:red", linestyle=":", label="target")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("relayed tokens/s")
    ax.set_title("Relay throughput of one coordinator")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def engine_efficiency(data: dict[str, Any], path: Path) -> bool:
    engine = data["engine"]
    if not engine:
        return False
    levels = sorted(engine, key=int)
    x = range(len(levels))
    fig, (rates, ratio) = plt.subplots(1, 2, figsize=(10, 4.5))
    for offset, (key, label) in zip(
        (-0.2, 0.2),
        (("direct_tokens_per_s", "direct"), ("network_tokens_per_s", "network")),
        strict=True,
    ):
        rates.bar([i + offset for i in x], [engine[lv][key] for lv in levels], 0.4, label=label)
    rates.set_xticks(list(x), levels)
    rates.set_xlabel("concurrent requests")
    rates.set_ylabel("tokens/s")
    rates.set_title("Generation speed")
    rates.legend()
    ratio.bar(list(x), [engine[lv]["network_over_direct"] for lv in levels], 0.5)
    ratio.axhline(data["engine_target"], color="tab:red", linestyle=":", label="target")
    ratio.set_xticks(list(x), levels)
    ratio.set_ylim(0, 1.1)
    ratio.set_xlabel("concurrent requests")
    ratio.set_ylabel("network / direct")
    ratio.set_title("Engine efficiency")
    ratio.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def ledger(data: dict[str, Any], path: Path) -> bool:
    rows = data["ledger"]
    if not rows:
        return False
    labels = [f"{r['backend']}\nconcurrency {r['concurrency']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    ax.bar([i - 0.2 for i in x], [r["reserve_and_settle_per_s"] for r in rows], 0.4)
    ax.bar([i + 0.2 for i in x], [r["settle_per_s"] for r in rows], 0.4)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("jobs/s")
    ax.set_title("Ledger: jobs per second")
    ax.legend(["reserve + settle", "settle"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def provider_concurrency(data: dict[str, Any], path: Path) -> bool:
    levels = data["concurrency"]
    if not levels:
        return False
    keys = sorted(levels, key=int)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("aggregate_tokens_per_s", "aggregate"),
        ("per_request_tokens_per_s", "per request"),
    ):
        ax.plot(keys, [levels[k][key] for k in keys], marker="o", label=label)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("tokens/s")
    ax.set_title("One provider serving several requests")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


CHARTS: dict[str, Callable[[dict[str, Any], Path], bool]] = {
    "gateway_latency.png": gateway_percentiles,
    "gateway_added_ttft.png": gateway_added,
    "relay_throughput.png": relay_throughput,
    "engine_efficiency.png": engine_efficiency,
    "ledger.png": ledger,
    "provider_concurrency.png": provider_concurrency,
}


def main() -> None:
    out = Path(sys.argv[1])
    data = json.load(sys.stdin)
    for name, draw in CHARTS.items():
        if draw(data, out / name):
            print(name)
        plt.close("all")


if __name__ == "__main__":
    main()
