"""The soak shape: ramp up, hold a plateau (with an optional fault window), ramp down, stop.

Stages, all from Locust options (or their LOCUST_* environment variables, or locust.conf):

=========== ============================= ===========================================
stage       duration                      users
=========== ============================= ===========================================
ramp        ``--ramp-time`` (s)           0 -> ``--peak-users`` at peak/ramp-time per s
plateau     ``--plateau-time`` (s)        ``--peak-users``
fault       inside the plateau, from      ``--peak-users``; only a label: the runner
            ``--fault-at`` s after it     (run.py failover/rollout) injects the fault and
            starts, ``--fault-length`` s  records the real window in faults.json
ramp-down   ``--ramp-down-time`` (s)      -> 0 at peak/ramp-down-time per s
=========== ============================= ===========================================

After the ramp-down the shape returns None and Locust stops by itself.
"""

from __future__ import annotations

from locust import LoadTestShape


class SoakShape(LoadTestShape):
    """Ramp, plateau (fault window marked inside), ramp down; durations from options."""

    def plan(self) -> dict[str, float]:
        """The stage durations and the fault window, in seconds from the start of the test."""
        options = self.runner.environment.parsed_options
        ramp = float(options.ramp_time)
        plateau = float(options.plateau_time)
        fault_at = float(options.fault_at)
        return {
            "peak": int(options.peak_users),
            "ramp": ramp,
            "plateau": plateau,
            "ramp_down": float(options.ramp_down_time),
            "fault_start": ramp + fault_at if fault_at >= 0 else -1.0,
            "fault_end": ramp + fault_at + float(options.fault_length) if fault_at >= 0 else -1.0,
        }

    def stage(self, elapsed: float | None = None) -> str:
        """The name of the stage at `elapsed` seconds (now by default)."""
        plan = self.plan()
        t = self.get_run_time() if elapsed is None else elapsed
        if t < plan["ramp"]:
            return "ramp"
        if plan["fault_start"] <= t < plan["fault_end"]:
            return "fault"
        if t < plan["ramp"] + plan["plateau"]:
            return "plateau"
        if t < plan["ramp"] + plan["plateau"] + plan["ramp_down"]:
            return "ramp-down"
        return "done"

    def tick(self):
        """(users, spawn rate) for the current stage; None ends the test."""
        plan = self.plan()
        stage = self.stage()
        peak = plan["peak"]
        if stage == "ramp":
            return peak, max(peak / max(plan["ramp"], 1), 0.1)
        if stage in ("plateau", "fault"):
            return peak, max(peak / max(plan["ramp"], 1), 0.1)
        if stage == "ramp-down":
            return 0, max(peak / max(plan["ramp_down"], 1), 0.1)
        return None
