"""Operational endpoints: liveness, readiness and Prometheus metrics (drain: internal.py)."""

import asyncio
import os
import time

from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from app.realtime.consumers.registry import registry
from app.realtime.ops import lifecycle, probes
from app.realtime.ops.readiness import readiness


async def healthz(request):
    """Liveness: the process answers. Deliberately checks nothing else."""
    return JsonResponse({"status": "ok"})


async def readyz(request):
    """Readiness: not draining, canary healthy, shared dependencies reached (within a grace).

    Every check is reported as it is now; app/realtime/ops/readiness.py decides which of them
    turn the answer into 503 (a shared database or Redis outage only after
    READINESS_DEPENDENCY_GRACE seconds).
    """
    # Both at once: a hung database and a hung Redis together still answer within one
    # timeout, inside the probe's own (the chart's timeoutSeconds).
    database, redis = await asyncio.gather(probes.database(), probes.redis())
    checks = {"database": database, "redis": redis}
    layer = get_channel_layer()
    checks["channel_layer"] = getattr(layer, "is_available", True)
    checks["not_draining"] = not registry.draining
    canary = lifecycle.canary()
    if canary is not None:
        checks["canary"] = canary.healthy
    verdict = readiness().judge(checks, time.monotonic(), settings.READINESS_DEPENDENCY_GRACE)
    return JsonResponse(verdict, status=503 if verdict["blocking"] else 200)


def metrics_view(request):
    """Prometheus exposition; gunicorn workers are aggregated in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collector = CollectorRegistry()
        multiprocess.MultiProcessCollector(collector)
    else:
        collector = REGISTRY
    return HttpResponse(generate_latest(collector), content_type=CONTENT_TYPE_LATEST)
