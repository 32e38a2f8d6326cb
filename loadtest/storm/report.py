"""The storm drill's figures as text, and the targets they are held to."""

from __future__ import annotations

import os


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (other work skews every figure)."""
    return [round(x, 2) for x in os.getloadavg()]


def _get(result: dict, *path):
    value = result
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def failures(result: dict, limits: dict[str, float]) -> list[str]:
    """The targets `result` misses, one sentence each (a missing figure misses its target)."""
    storm = result.get("storm", {})
    out = []

    def above(name: str, value, label: str) -> None:
        if name in limits and (value is None or value > limits[name]):
            out.append(f"{label} {_n(value)} > {limits[name]:g}")

    if "max_resume_seconds" in limits:
        last = storm.get("last_s")
        if last is None or last > limits["max_resume_seconds"]:
            out.append(f"last affected client resumed after {_s(last)} > "
                       f"{limits['max_resume_seconds']:g} s")
    above("max_not_resumed", storm.get("not_resumed"), "clients not resumed")
    above("max_refused", storm.get("refused"), "handshakes refused")
    above("max_failed", storm.get("failed"), "handshakes failed")
    above("max_lost", result.get("lost"), "events lost")
    above("max_duplicates", result.get("duplicates"), "duplicate events")
    if "min_resumes_per_s" in limits:
        rate = _get(result, "resume", "rate")
        if rate is None or rate < limits["min_resumes_per_s"]:
            out.append(f"resumes/s with nothing missed {_n(rate)} < "
                       f"{limits['min_resumes_per_s']:g}")
    if result.get("error"):
        out.append(f"the drill failed: {result['error']}")
    return out


def cpu_words(spent: dict | None) -> str:
    """A phase's CPU per handshake by part, and the rate this machine's cores could serve."""
    if not spent:
        return "CPU per handshake: not measured"
    parts = ", ".join(f"{part} {spent[part]:.2f}" for part in ("ws", "nginx", "redis", "clients")
                      if part in spent)
    return (f"CPU ms per handshake: {parts}; all {spent['all']:.2f}, so at most "
            f"{_n(spent['capacity_per_s'])}/s on {spent['cores']} cores")


def steps_words(steps: dict | None) -> str:
    """Each step of the affected clients' way back: how many reached it, p50 and last."""
    names = {"told": "`reconnect` read", "waited": "then waited",
             "reopened": "handshake begun", "upgraded": "101"}
    return "; ".join(f"{names[step]} {figures['count']} p50 {_s(figures['p50_s'])} last "
                     f"{_s(figures['last_s'])}" for step, figures in (steps or {}).items()
                     if figures["count"]) or "-"


def lag_words(lags: list | None) -> str:
    """The load generator's loop lag per worker process, p99/max in seconds."""
    return ", ".join(f"{lag['p99']:.2f}/{lag['max']:.2f} s" for lag in lags or []
                     if lag and lag.get("max") is not None) or "-"


def summary(result: dict) -> str:
    """The console summary of one drill."""
    cfg, storm, fault = result["config"], result.get("storm", {}), result.get("fault", {})
    fresh, resume = result.get("fresh", {}), result.get("resume", {})
    rates = storm.get("resumes_per_s") or {}
    lines = [
        f"storm drill ({cfg['mode']}): {_n(cfg['clients'])} clients in {result.get('rooms')} "
        f"rooms, {cfg['users']} users, {cfg['rate']:g} msg/s per room",
        f"  handshakes, nothing else going on ({cfg['concurrency']} in flight): fresh joins "
        f"{_n(fresh.get('rate'))}/s ({fresh.get('count')} in {_s(fresh.get('seconds'))}), "
        f"resumes with nothing missed {_n(resume.get('rate'))}/s ({resume.get('count')} in "
        f"{_s(resume.get('seconds'))})",
        f"  fresh joins' {cpu_words(fresh.get('cpu_ms'))}",
        f"  resumes' {cpu_words(resume.get('cpu_ms'))}",
        f"  fault: {fault.get('mode')} of {fault.get('program')} ({fault.get('node')}): "
        f"{storm.get('affected')} clients affected, {storm.get('lost_socket')} lost their "
        f"socket, {storm.get('collateral')} others did",
        f"  resumed: {storm.get('resumed')}/{storm.get('affected')}; time from the fault to "
        f"resume_end p50 {_s(storm.get('p50_s'))}, p99 {_s(storm.get('p99_s'))}, last "
        f"{_s(storm.get('last_s'))}",
        f"  on the way (from the fault): {steps_words(storm.get('steps'))}; resumed on "
        f"{storm.get('resumed_on')}; the generator's event loops late by p99/max "
        f"{lag_words(storm.get('generator_loop_lag_s'))}",
        f"  resumes/s during the storm: average {_n(rates.get('average'))}, peak "
        f"{_n(rates.get('peak'))} in one second",
        f"  storm handshakes: {storm.get('handshakes')}; refused {storm.get('refused')} "
        f"{storm.get('refusals') or ''}, failed {storm.get('failed')} "
        f"{storm.get('failures') or ''}",
        f"  events: {_n(_get(result, 'final_seqs', 'events'))} stored, "
        f"{result.get('sent')} sent; lost {result.get('lost')} (clients "
        f"{result.get('lost_clients')}), duplicates {result.get('duplicates')}, out of order "
        f"{result.get('gaps')}; clients away at the end {result.get('away_at_end')} "
        f"({result.get('pending_for_away')} events pending for them), connected but behind "
        f"{result.get('behind_at_end')}",
        f"  error frames: {result.get('errors') or 'none'}; load average "
        f"{_get(result, 'machine', 'load_average')}",
    ]
    if result.get("duplicate_samples"):
        lines.append(f"  duplicates, samples: {result['duplicate_samples'][:3]}")
    if result.get("lost_samples"):
        lines.append(f"  lost, samples: {result['lost_samples'][:3]}")
    return "\n".join(lines)
