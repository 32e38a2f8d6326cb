"""Which failing `/readyz` checks take this process out of its Service, and when.

A Service sends traffic only to ready pods. PostgreSQL and Redis are shared by every pod: when
one of them stops, every pod's check fails at the same moment, and if readiness followed those
checks, a database restart of a few seconds would empty every Service at once, nginx would
answer 502 to everything (the healthy WebSocket sockets' reconnects included), and nothing
would be gained: no other pod could serve better. So a shared dependency counts against
readiness only

- until this process has reached it once: a new pod with a wrong `DATABASE_URL` or Redis
  password never turns ready, so a rollout of a broken configuration stops at its first pod;
- once it has failed for longer than READINESS_DEPENDENCY_GRACE seconds: a fault of this pod
  alone (its node's network, its connection pool) takes it out, while a shared outage shorter
  than the grace leaves every pod serving what does not need the failed dependency.

What only this process can fix fails readiness at once: draining, and the canary (which has
its own grace, CANARY_FAIL_AFTER). The checks themselves are reported as they are, every time,
in the body and in the metrics.
"""

from __future__ import annotations

from django.db.backends.signals import connection_created

from app.realtime.ops import metrics

# The checks of shared dependencies, in the order /readyz reports them.
SHARED = ("database", "redis", "channel_layer")


class Dependency:
    """One shared dependency as this process has seen it: reached yet, failing since when."""

    def __init__(self) -> None:
        self.reached = False
        self.failing_since: float | None = None

    def observe(self, ok: bool, now: float) -> None:
        """Record one check's result at monotonic time now."""
        if ok:
            self.reached = True
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = now

    def failing_for(self, now: float) -> float:
        """Seconds since the first failed check of the current failure (0 while it passes)."""
        return 0.0 if self.failing_since is None else now - self.failing_since

    def blocks(self, now: float, grace: float) -> bool:
        """Whether this dependency makes the process unready now (see the module docstring)."""
        if not self.reached:
            return True
        return self.failing_since is not None and self.failing_for(now) > grace


class Readiness:
    """The readiness verdict of one process from its checks, remembering each dependency."""

    def __init__(self) -> None:
        self.dependencies = {name: Dependency() for name in SHARED}

    def judge(self, checks: dict[str, bool], now: float, grace: float) -> dict:
        """Return the /readyz body for these checks and export them as metrics.

        `status` is `ready`, `degraded` (ready, but a shared dependency fails within its
        grace) or `not_ready`; `blocking` names the checks that make it not ready.
        """
        blocking = []
        failing_for = {}
        for name, ok in checks.items():
            dependency = self.dependencies.get(name)
            if dependency is None:
                if not ok:
                    blocking.append(name)  # this process's own: draining, canary
                continue
            dependency.observe(bool(ok), now)
            metrics.DEPENDENCY_UP.labels(name).set(1 if ok else 0)
            if not ok:
                failing_for[name] = round(dependency.failing_for(now), 1)
            if dependency.blocks(now, grace):
                blocking.append(name)
        ready = not blocking
        metrics.READY.set(1 if ready else 0)
        status = "not_ready" if not ready else ("degraded" if failing_for else "ready")
        return {"status": status, "checks": checks, "blocking": blocking,
                "failing_for": failing_for, "dependency_grace": grace}


_readiness = Readiness()


def readiness() -> Readiness:
    """The process's readiness state (one per process: gunicorn workers each keep their own)."""
    return _readiness


def database_connected(sender, connection, **kwargs) -> None:
    """Called for every new database connection: the database counts as reached."""
    # A gunicorn worker that served requests but was never probed must not count as "never
    # reached" (and answer 503 at once) when the kubelet's probe first lands on it mid-outage.
    _readiness.dependencies["database"].reached = True


connection_created.connect(database_connected, dispatch_uid="chanfleet-readiness")
