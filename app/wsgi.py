"""WSGI entry point, for WSGI servers and tools that want one (the HTTP role uses ASGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
application = get_wsgi_application()
