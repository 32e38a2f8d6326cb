"""Readiness: a shared dependency's short outage keeps the process ready; its own faults do not."""

from app.realtime.ops import metrics
from app.realtime.ops.readiness import Readiness

GRACE = 60.0
HEALTHY = {"database": True, "redis": True, "channel_layer": True, "not_draining": True,
           "canary": True}


def checks(**changed) -> dict:
    """The healthy checks with some changed."""
    return {**HEALTHY, **changed}


def gauge(metric, **labels) -> float:
    """A gauge's current value in this process."""
    return (metric.labels(**labels) if labels else metric)._value.get()


def test_all_checks_passing_is_ready_with_nothing_failing():
    """The healthy case: 200's body says ready and blocks nothing."""
    verdict = Readiness().judge(checks(), 0.0, GRACE)
    assert verdict["status"] == "ready"
    assert (verdict["blocking"], verdict["failing_for"]) == ([], {})
    assert verdict["checks"] == HEALTHY


def test_a_dependency_never_reached_keeps_a_new_process_out():
    """A new pod with a wrong DATABASE_URL never turns ready, whatever the grace."""
    verdict = Readiness().judge(checks(database=False), 0.0, GRACE)
    assert verdict["status"] == "not_ready" and verdict["blocking"] == ["database"]


def test_a_shared_outage_within_the_grace_is_degraded_but_ready():
    """Once reached, the database may fail up to the grace: ready, with how long it failed."""
    readiness = Readiness()
    readiness.judge(checks(), 0.0, GRACE)
    readiness.judge(checks(database=False, redis=False), 10.0, GRACE)
    verdict = readiness.judge(checks(database=False, redis=False), 40.0, GRACE)
    assert verdict["status"] == "degraded" and verdict["blocking"] == []
    assert verdict["failing_for"] == {"database": 30.0, "redis": 30.0}
    assert verdict["checks"]["database"] is False


def test_a_dependency_failing_longer_than_the_grace_takes_the_process_out():
    """Past the grace the failure may be this pod's own: not ready, naming the dependency."""
    readiness = Readiness()
    readiness.judge(checks(), 0.0, GRACE)
    readiness.judge(checks(channel_layer=False), 1.0, GRACE)
    assert readiness.judge(checks(channel_layer=False), 61.0, GRACE)["blocking"] == []
    verdict = readiness.judge(checks(channel_layer=False), 61.5, GRACE)
    assert verdict["status"] == "not_ready" and verdict["blocking"] == ["channel_layer"]


def test_one_passing_check_restarts_the_grace():
    """The grace counts one continuous failure, not failures added up."""
    readiness = Readiness()
    readiness.judge(checks(), 0.0, GRACE)
    readiness.judge(checks(database=False), 1.0, GRACE)
    readiness.judge(checks(), 50.0, GRACE)
    readiness.judge(checks(database=False), 51.0, GRACE)
    verdict = readiness.judge(checks(database=False), 100.0, GRACE)
    assert verdict["blocking"] == [] and verdict["failing_for"] == {"database": 49.0}


def test_a_grace_of_zero_fails_readiness_at_the_first_failed_check():
    """READINESS_DEPENDENCY_GRACE=0 restores the strict behaviour."""
    readiness = Readiness()
    readiness.judge(checks(), 0.0, 0.0)
    readiness.judge(checks(redis=False), 5.0, 0.0)
    assert readiness.judge(checks(redis=False), 5.1, 0.0)["blocking"] == ["redis"]


def test_draining_and_the_canary_fail_readiness_at_once():
    """What only this process can fix is never excused by the grace."""
    readiness = Readiness()
    readiness.judge(checks(), 0.0, GRACE)
    assert readiness.judge(checks(not_draining=False), 1.0, GRACE)["blocking"] == [
        "not_draining"]
    assert readiness.judge(checks(canary=False), 2.0, GRACE)["blocking"] == ["canary"]


def test_the_verdict_and_each_dependency_are_exported_as_gauges():
    """chanfleet_dependency_up follows each check; chanfleet_ready the answer."""
    readiness = Readiness()
    readiness.judge(checks(), 0.0, GRACE)
    readiness.judge(checks(database=False), 1.0, GRACE)
    assert gauge(metrics.DEPENDENCY_UP, dependency="database") == 0
    assert gauge(metrics.DEPENDENCY_UP, dependency="redis") == 1
    assert gauge(metrics.READY) == 1
    readiness.judge(checks(database=False), 100.0, GRACE)
    assert gauge(metrics.READY) == 0
    readiness.judge(checks(), 101.0, GRACE)
    assert gauge(metrics.DEPENDENCY_UP, dependency="database") == 1
    assert gauge(metrics.READY) == 1


def test_a_database_connection_counts_as_reached(monkeypatch):
    """Any new connection of this process (a request, a chat write) marks the database reached."""
    from django.db.backends.signals import connection_created

    from app.realtime.ops import readiness as module

    fresh = Readiness()
    monkeypatch.setattr(module, "_readiness", fresh)
    connection_created.send(sender=None, connection=None)
    verdict = fresh.judge(checks(database=False), 0.0, GRACE)
    assert verdict["status"] == "degraded" and verdict["blocking"] == []
