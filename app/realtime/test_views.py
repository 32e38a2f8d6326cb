"""Operational endpoints: healthz, readyz, metrics and the drain guard."""

import pytest
from django.test import Client

from app.realtime.registry import registry

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


def test_readyz_is_503_while_draining():
    """A draining process is not ready, so Kubernetes stops sending it traffic."""
    registry.draining = True
    try:
        response = Client().get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["not_draining"] is False
    finally:
        registry.draining = False


def test_metrics_exposes_chanfleet_metrics():
    """/metrics is Prometheus text with our metric names."""
    Client().get("/healthz")
    body = Client().get("/metrics").content.decode()
    assert "chanfleet_http_requests_total" in body
    assert 'view="healthz"' in body


def test_drain_refuses_non_local_callers():
    """The drain endpoint only answers the pod itself."""
    response = Client(REMOTE_ADDR="10.1.2.3").post("/internal/drain")
    assert response.status_code == 403
    assert not registry.draining


def test_drain_needs_post():
    """GET does not drain."""
    assert Client().get("/internal/drain").status_code == 405


def test_drain_needs_no_csrf_token_from_loopback():
    """The preStop hook's bare POST is accepted (CSRF enforced like in production)."""
    client = Client(enforce_csrf_checks=True)
    try:
        response = client.post("/internal/drain?exit=0&window=0")
        assert response.status_code == 202
    finally:
        registry.draining = False
