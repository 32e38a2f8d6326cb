"""ASGI entry point: HTTP to Django, WebSockets through origin and session checks to the routes."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
# Initialise Django (apps, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from app.chat.routing import websocket_urlpatterns  # noqa: E402
from app.realtime.consumers.handshake import WebSocketAuth  # noqa: E402
from app.realtime.ops.internal import InternalEndpoints  # noqa: E402
from app.realtime.ops.lifecycle import ProcessServices  # noqa: E402
from app.realtime.server import daphne_server  # noqa: E402

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
if daphne_server.served_by_daphne():
    application = daphne_server.wrap(application)
