"""Plots and window statistics of a load-test run, from the folder the run wrote.

Reads `timeseries.jsonl` (one line per second from the locustfile's sampler) and, when the
runner injected faults, `faults.json` ([{"name", "start", "end"}], Unix seconds). Writes
`connections.png`, `rtt.png` and `throughput.png` (fault windows shaded) and returns the RTT
percentiles inside and outside the fault windows.

    python -m loadtest.report build/loadtest/<run>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loadtest.ledger import merge, percentile


def load(folder: Path) -> tuple[list[dict], list[dict]]:
    """The time series and the fault windows of a run folder."""
    series_file = folder / "timeseries.jsonl"
    series = [json.loads(line) for line in series_file.read_text().splitlines() if line.strip()]
    faults_file = folder / "faults.json"
    faults = json.loads(faults_file.read_text()) if faults_file.exists() else []
    return series, faults


def inside(t: float, faults: list[dict]) -> bool:
    """Whether time t falls in a fault window (a sample covers the second before its t)."""
    return any(f["start"] < t and t - 1 <= f["end"] for f in faults)


def window_stats(series: list[dict], faults: list[dict]) -> dict:
    """Broadcast RTT p50/p95/p99 (ms) and sample counts inside and outside the fault windows."""
    parts = {"inside": [], "outside": []}
    for line in series:
        parts["inside" if inside(line["t"], faults) else "outside"].append(line["rtt"])
    stats = {}
    for name, histograms in parts.items():
        histogram = merge(histograms)
        stats[name] = {
            "samples": int(sum(histogram.values())),
            "p50_ms": percentile(histogram, 0.50),
            "p95_ms": percentile(histogram, 0.95),
            "p99_ms": percentile(histogram, 0.99),
        }
    return stats


def render(folder: Path | str) -> list[Path]:
    """Write the three PNGs into the run folder; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    series, faults = load(folder)
    if not series:
        return []
    t0 = series[0]["t"] - series[0].get("elapsed", 0)
    x = [line["t"] - t0 for line in series]
    title = folder.name

    def figure(ylabel: str):
        fig, ax = plt.subplots(figsize=(11, 4.2), dpi=100)
        for i, fault in enumerate(faults):
            ax.axvspan(fault["start"] - t0, fault["end"] - t0, color="tab:red", alpha=0.15,
                       label="fault window" if i == 0 else None)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        return fig, ax

    def save(fig, ax, name: str, heading: str) -> Path:
        ax.set_title(f"{heading} — {title}")
        ax.legend(loc="upper left")
        fig.tight_layout()
        path = folder / name
        fig.savefig(path)
        plt.close(fig)
        return path

    written = []
    fig, ax = figure("count")
    ax.plot(x, [line["users"] for line in series], label="users", color="tab:gray")
    ax.plot(x, [line["open"] for line in series], label="open WebSockets", color="tab:blue")
    ax.plot(x, [line["dropped"] for line in series], label="dropped (cumulative)",
            color="tab:red")
    ax.plot(x, [line["connect_errors"] for line in series],
            label="connect errors (cumulative)", color="tab:orange")
    written.append(save(fig, ax, "connections.png", "Connections"))

    fig, ax = figure("broadcast round trip (ms)")
    for q, color in ((0.50, "tab:green"), (0.95, "tab:orange"), (0.99, "tab:red")):
        values = [percentile(line["rtt"], q) for line in series]
        ax.plot(x, [v if v is not None else float("nan") for v in values],
                label=f"p{int(q * 100)}", color=color)
    ax.set_yscale("symlog", linthresh=10)
    written.append(save(fig, ax, "rtt.png", "Broadcast RTT percentiles per second"))

    fig, ax = figure("per second")
    ax.plot(x, [line["sent"] for line in series], label="messages sent/s", color="tab:blue")
    ax.plot(x, [line["received"] for line in series], label="messages delivered/s",
            color="tab:green")
    ax.plot(x, [line["reconnects"] for line in series], label="reconnects/s",
            color="tab:purple")
    written.append(save(fig, ax, "throughput.png", "Messages per second"))
    return written


def main(argv: list[str] | None = None) -> int:
    """Render a run folder given on the command line and print the window statistics."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtest.report RUN_FOLDER", file=sys.stderr)
        return 64
    folder = Path(args[0])
    for path in render(folder):
        print(path)
    series, faults = load(folder)
    print(json.dumps(window_stats(series, faults), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
