"""The load ramp's rules: when it stops, which step is the capacity, which is the best.

A step is a dict with at least `rate_per_room`, `throughput` (deliveries/s received in its
window), `p99_ms` and, once the backlog has drained, `expected` and `delivered`.
"""

from __future__ import annotations

P99_BOUND_MS = 250.0  # the latency users read as "live", as in the usual WebSocket shoot-outs
GROWTH = 1.05  # a step that does not beat the best so far by this much did not grow
FLAT_STEPS = 2  # steps in a row without growth that end the ramp
EXPLODE_MS = 5000.0  # a step whose p99 passes this ends the ramp at once


def stop_reason(steps: list[dict], explode_ms: float = EXPLODE_MS) -> str | None:
    """Why the ramp ends after these steps ("flat" or "p99"), or None to go on."""
    if not steps:
        return None
    if (steps[-1].get("p99_ms") or 0.0) > explode_ms:
        return "p99"
    best, flat = 0.0, 0
    for step in steps:
        flat = 0 if step["throughput"] > best * GROWTH else flat + 1
        best = max(best, step["throughput"])
    # Past saturation a backlog builds up and deliveries/s stay at capacity.
    return "flat" if flat >= FLAT_STEPS else None


def lost(step: dict) -> int:
    """Deliveries a step's messages never made (0 before its counts are known)."""
    return max(0, step.get("expected", 0) - step.get("delivered", 0))


def capacity(steps: list[dict], bound_ms: float = P99_BOUND_MS) -> dict | None:
    """The highest step that lost nothing with p99 at or under bound_ms, or None."""
    fits = [s for s in steps if "expected" in s and lost(s) == 0
            and s.get("p99_ms") is not None and s["p99_ms"] <= bound_ms]
    return max(fits, key=lambda s: s["rate_per_room"], default=None)


def best(steps: list[dict]) -> dict | None:
    """The step with the most deliveries per second, whatever its latency, or None."""
    return max(steps, key=lambda s: s["throughput"], default=None)
