"""What `--diagnose` adds to the comfortable phase: CPU counters from /proc.

Not part of the standing run: they explain a result (docs/benchmarks.md, decisions), they are
not one. Each counter is read before and after the phase; `counters()` turns the two readings
into rates.
"""

from __future__ import annotations

import os
from pathlib import Path

from .systems import cpu_ticks, total_cpu_seconds

PROC = Path("/proc")


def machine_cpu_seconds(stat_text: str | None = None) -> float:
    """CPU seconds every process of the machine has spent since boot (not idle nor iowait)."""
    total, idle = cpu_ticks(stat_text if stat_text is not None
                            else (PROC / "stat").read_text())
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def cpu_pressure_seconds(pressure_text: str | None = None) -> float | None:
    """Seconds since boot some runnable task waited for a CPU (Linux PSI), or None."""
    if pressure_text is None:
        try:
            pressure_text = (PROC / "pressure" / "cpu").read_text()
        except OSError:
            return None
    for line in pressure_text.splitlines():
        if line.startswith("some "):
            return int(dict(item.split("=", 1) for item in line.split()[1:])["total"]) / 1e6
    return None


def reading(ws_pids: list[int], generator_pids: list[int]) -> dict:
    """Every counter now."""
    return {"ws_cpu": total_cpu_seconds(ws_pids),
            "generator_cpu": total_cpu_seconds(generator_pids),
            "machine_cpu": machine_cpu_seconds(), "pressure": cpu_pressure_seconds()}


def counters(before: dict, after: dict, seconds: float, deliveries: int) -> dict:
    """The rates between two readings over a phase of `seconds` with `deliveries`."""
    def per_s(key: str) -> float:
        return round(1000 * (after[key] - before[key]) / seconds, 1)

    pressure = (None if before["pressure"] is None or after["pressure"] is None
                else round(1000 * (after["pressure"] - before["pressure"]) / seconds, 1))
    return {
        "ws_cpu_ms_per_s": per_s("ws_cpu"),
        "ws_cpu_us_per_delivery": (round(1e6 * (after["ws_cpu"] - before["ws_cpu"])
                                         / deliveries, 1) if deliveries else None),
        "generator_cpu_ms_per_s": per_s("generator_cpu"),
        "machine_cpu_ms_per_s": per_s("machine_cpu"),
        "cpu_pressure_ms_per_s": pressure,
    }
