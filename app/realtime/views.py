"""Operational endpoints: liveness, readiness, Prometheus metrics and the drain trigger."""

import asyncio
import ipaddress
import os
import signal

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from . import lifecycle
from .registry import registry
from .store import get_store


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


def _local(request) -> bool:
    # nginx never forwards /internal/ or /metrics; this guards direct access from elsewhere.
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def metrics_view(request):
    """Prometheus exposition; gunicorn workers are aggregated in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collector = CollectorRegistry()
        multiprocess.MultiProcessCollector(collector)
    else:
        collector = REGISTRY
    return HttpResponse(generate_latest(collector), content_type=CONTENT_TYPE_LATEST)


@csrf_exempt  # loopback-only and cookie-less: the preStop hook has no CSRF token
async def drain(request):
    """POST from the pod itself: stop taking sockets, move clients elsewhere, then exit.

    `?wait=1` returns only when every client was asked to leave (the preStop hook uses it);
    `?exit=0` keeps the process running afterwards (tests).
    """
    if request.method != "POST":
        return JsonResponse({"error": "method_not_allowed"}, status=405)
    if not _local(request):
        return JsonResponse({"error": "forbidden"}, status=403)
    window = float(request.GET.get("window", settings.DRAIN_WINDOW))
    exit_after = request.GET.get("exit", "1") != "0"
    already = registry.draining

    async def run():
        return await registry.drain(window, settings.DRAIN_RETRY_MAX_MS)

    if already:
        return JsonResponse({"status": "draining"}, status=202)
    if request.GET.get("wait") == "1":
        count = await run()
        if exit_after:
            _spawn(_exit_soon())  # after this response reaches the preStop hook
        return JsonResponse({"status": "drained", "clients": count})

    async def run_then_exit():
        await run()
        if exit_after:
            await _exit_soon()

    _spawn(run_then_exit())
    return JsonResponse({"status": "draining", "clients": len(registry.consumers)}, status=202)


async def _exit_soon(delay: float = 1.0) -> None:
    # Let the last close frames and the drain response flush, then stop like a SIGTERM would.
    await asyncio.sleep(delay)
    os.kill(os.getpid(), signal.SIGTERM)


def _spawn(coroutine) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set = set()


async def status(request):
    """Loopback only: what this process holds (for operators and the topology tests)."""
    if not _local(request):
        return JsonResponse({"error": "forbidden"}, status=403)
    layer = get_channel_layer()
    return JsonResponse({
        "node": settings.NODE_NAME,
        "role": settings.PROCESS_ROLE,
        "pid": os.getpid(),
        "draining": registry.draining,
        "connections": len(registry.consumers),
        "layer_prefix": getattr(layer, "client_prefix", None),
        "local_groups": len(getattr(layer, "local_groups", {})),
    })
