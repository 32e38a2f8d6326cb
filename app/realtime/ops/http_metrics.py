"""HTTP request metrics by view name (route pattern), method and status."""

import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from app.realtime.ops import metrics


def _view_name(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.view_name or match.route or "unknown"


class MetricsMiddleware:
    """Counts and times every HTTP request; works under both sync and async stacks."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        """Time the request and record it."""
        if iscoroutinefunction(self):
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._record(request, response, started)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        self._record(request, response, started)
        return response

    @staticmethod
    def _record(request, response, started: float) -> None:
        view = _view_name(request)
        metrics.HTTP_REQUESTS.labels(view, request.method, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(view).observe(time.perf_counter() - started)
