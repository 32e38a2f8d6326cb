"""WebSocket routes (docs/protocol.md)."""

from django.urls import path, re_path

from . import consumers

websocket_urlpatterns = [
    path("ws/chat/<str:room_name>/", consumers.ChatConsumer.as_asgi()),
    path("ws/notifications/", consumers.NotificationConsumer.as_asgi()),
    path("ws/live-updates/", consumers.LiveUpdateConsumer.as_asgi()),
    re_path(r"^ws/user/(?P<user_id>\d{1,18})/$", consumers.UserConsumer.as_asgi()),
]
