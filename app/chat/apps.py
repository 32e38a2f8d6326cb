"""The chat application: rooms, messages, notifications, presence and live updates."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """Registers the chat app and its signal handlers."""

    name = "app.chat"
    label = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """Connect the model signals that publish live updates, and readiness's own."""
        from app.realtime.ops import readiness  # noqa: F401  (database connections seen)

        from . import signals  # noqa: F401
