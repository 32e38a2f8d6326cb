"""ASGI entry point: HTTP to Django, WebSockets through origin and session checks to the routes."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
# Initialise Django (apps, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from app.chat.routing import websocket_urlpatterns  # noqa: E402
from app.realtime import daphne_compat  # noqa: E402
from app.realtime.lifecycle import ProcessServices  # noqa: E402

daphne_compat.install()

application = ProcessServices(
    ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    })
)
