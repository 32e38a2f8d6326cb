"""The HTTP answer while the database cannot be reached: 503 `database_unavailable`, retry.

Without it a view whose database is restarting or failing over raised, and Django answered 500,
the code of a server bug, which clients do not retry. The same errors get the WebSocket frame
of the same name (app/realtime/consumers/base.py).
"""

from django.http import HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from app.realtime.consumers.errors import (
    DATABASE_RETRY_AFTER,
    database_unavailable,
    database_unreachable,
)


def unavailable_response(request) -> HttpResponse:
    """503 with Retry-After: the API's JSON error, plain text for pages."""
    problem = database_unavailable()
    if request.path.startswith("/api/"):
        response = JsonResponse({"error": problem.code, "message": str(problem)}, status=503)
    else:
        response = HttpResponse("The service is briefly unavailable, retry in a moment.\n",
                                content_type="text/plain; charset=utf-8", status=503)
    response["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """Answers 503 for a view that raised because the database is unreachable."""

    def process_exception(self, request, exception):
        """Return the 503 for an unreachable database; None leaves other errors to Django."""
        # A hook, not a handler500: under ASGI Django builds the 500 in another thread, where
        # the exception is no longer at hand (sys.exc_info() is empty there).
        if database_unreachable(exception):
            return unavailable_response(request)
        return None
