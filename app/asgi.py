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
from app.realtime.lifecycle import ProcessServices  # noqa: E402

if "daphne.server" in sys.modules:
    # Served by daphne (WS_SERVER=daphne): its close codes and writes need help.
    from app.realtime import daphne_compat

    daphne_compat.install()

application = ProcessServices(
    ProtocolTypeRouter({
        "http": django_asgi_app,
        # channels' origin check, cookie, session and auth middleware, in one layer.
        "websocket": WebSocketAuth(URLRouter(websocket_urlpatterns)),
    })
)
