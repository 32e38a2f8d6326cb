"""The web client app: Django templates and plain ES modules served by the HTTP processes."""

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class WebConfig(AppConfig):
    """Pages for people: log in, rooms, a room, notifications (docs/protocol.md clients)."""

    name = "app.web"
    label = "web"
    verbose_name = "Web client"


class AdminConfig(admin_apps.AdminConfig):
    """Django's admin with its login behind the login throttle (app/chat/login_guard.py)."""

    # INSTALLED_APPS names this class; app.web's own config stays WebConfig.
    default = False
    default_site = "app.chat.login_guard.ThrottledAdminSite"
