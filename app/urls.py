"""HTTP routes: the JSON API, the operational endpoints and the admin.

The internal endpoints (drain, status) are not here: app/realtime/ops/internal.py serves them on the
loopback-only listener.
"""

from django.contrib import admin
from django.urls import include, path

from app.chat import views as api
from app.realtime.ops import views as ops

urlpatterns = [
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics_view, name="metrics"),
    path("api/csrf", api.csrf, name="csrf"),
    path("api/login", api.api_login, name="login"),
    path("api/logout", api.api_logout, name="logout"),
    path("api/me", api.me, name="me"),
    path("api/rooms", api.rooms, name="rooms"),
    path("api/rooms/<str:name>", api.room_detail, name="room-detail"),
    path("api/rooms/<str:name>/messages", api.room_messages, name="room-messages"),
    path("api/notifications", api.notifications, name="notifications"),
    path("api/notifications/send", api.send_notification, name="notification-send"),
    path("admin/", admin.site.urls),
    path("", include("app.web.urls")),
]
