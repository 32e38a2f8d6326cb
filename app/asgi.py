"""ASGI entry point: HTTP to Django, WebSockets through origin and session checks to the routes."""

import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
# Initialise Django (apps, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from app.chat.routing import websocket_urlpatterns  # noqa: E402
from app.realtime.handshake import WebSocketAuth  # noqa: E402
from app.realtime.internal import InternalEndpoints  # noqa: E402
from app.realtime.lifecycle import ProcessServices  # noqa: E402

served_by_daphne = "daphne.server" in sys.modules
if served_by_daphne:
    # Served by daphne (WS_SERVER=daphne): its close codes and writes need help.
    from app.realtime import daphne_compat

    daphne_compat.install()

application = ProcessServices(
    # Drain and status, on the loopback-only listener only (INTERNAL_PORT).
    InternalEndpoints(
        ProtocolTypeRouter({
            "http": django_asgi_app,
            # channels' origin check, cookie, session and auth middleware, in one layer.
            "websocket": WebSocketAuth(URLRouter(websocket_urlpatterns)),
        })
    )
)
if served_by_daphne:
    # daphne's own --proxy-headers believes any peer; uvicorn's middleware believes only
    # FORWARDED_ALLOW_IPS, as the uvicorn and gunicorn servers do.
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    application = ProxyHeadersMiddleware(
        application, trusted_hosts=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"))
