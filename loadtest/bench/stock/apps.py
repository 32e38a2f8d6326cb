"""The stock chat app."""

from django.apps import AppConfig


class StockConfig(AppConfig):
    """The chapter's `chat` app."""

    name = "loadtest.bench.stock"
    label = "stockchat"
    default_auto_field = "django.db.models.BigAutoField"
