"""Operational endpoints: liveness, readiness and Prometheus metrics (drain: internal.py)."""

import asyncio
import os

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from app.realtime.consumers.registry import registry
from app.realtime.layer.store import get_store
from app.realtime.ops import lifecycle


async def healthz(request):
    """Liveness: the process answers. Deliberately checks nothing else."""
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return True


async def readyz(request):
    """Readiness: database and Redis reachable, not draining, canary healthy (WS processes)."""
    checks = {}
    try:
        checks["database"] = await asyncio.wait_for(sync_to_async(_database_ok)(), 3)
    except Exception:
        checks["database"] = False
    try:
        checks["redis"] = await asyncio.wait_for(get_store().ping(), 3)
    except Exception:
        checks["redis"] = False
    layer = get_channel_layer()
    checks["channel_layer"] = getattr(layer, "is_available", True)
    checks["not_draining"] = not registry.draining
    canary = lifecycle.canary()
    if canary is not None:
        checks["canary"] = canary.healthy
    ok = all(checks.values())
    return JsonResponse({"status": "ready" if ok else "not_ready", "checks": checks},
                        status=200 if ok else 503)


def metrics_view(request):
    """Prometheus exposition; gunicorn workers are aggregated in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collector = CollectorRegistry()
        multiprocess.MultiProcessCollector(collector)
    else:
        collector = REGISTRY
    return HttpResponse(generate_latest(collector), content_type=CONTENT_TYPE_LATEST)
