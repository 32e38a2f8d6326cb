"""The web client app: Django templates and plain ES modules served by the HTTP processes."""

from django.apps import AppConfig


class WebConfig(AppConfig):
    """Pages for people: log in, rooms, a room, notifications (docs/protocol.md clients)."""

    name = "app.web"
    label = "web"
    verbose_name = "Web client"
