"""Operational endpoints: healthz, readyz and metrics."""

import pytest
from django.test import Client

from app.realtime.consumers.registry import registry

pytestmark = [pytest.mark.django_db]


def test_healthz_is_always_ok():
    """Liveness checks nothing but the process."""
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_redis_layer_and_drain():
    """Readiness reports each check and is 200 when all pass."""
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {
        "database": True, "redis": True, "channel_layer": True, "not_draining": True}


def test_readyz_says_why_it_is_ready_and_which_grace_applies(settings):
    """The body names what blocks readiness (nothing), what fails (nothing) and the grace."""
    settings.READINESS_DEPENDENCY_GRACE = 7
    body = Client().get("/readyz").json()
    assert (body["status"], body["blocking"], body["failing_for"]) == ("ready", [], {})
    assert body["dependency_grace"] == 7


def test_readyz_is_503_while_draining():
    """A draining process is not ready, so Kubernetes stops sending it traffic."""
    registry.draining = True
    try:
        response = Client().get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["not_draining"] is False
        assert response.json()["blocking"] == ["not_draining"]
    finally:
        registry.draining = False


def test_metrics_exposes_chanfleet_metrics():
    """/metrics is Prometheus text with our metric names."""
    Client().get("/healthz")
    body = Client().get("/metrics").content.decode()
    assert "chanfleet_http_requests_total" in body
    assert 'view="healthz"' in body


def test_internal_paths_do_not_exist_in_django():
    """Drain and status are not Django routes: only the loopback listener serves them."""
    client = Client(HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert client.post("/internal/drain").status_code == 404
    assert client.get("/internal/status").status_code == 404
    assert not registry.draining
