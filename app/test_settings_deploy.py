"""Production settings pass Django's deployment checklist with nothing reported."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "app.settings",
    "SECRET_KEY": "a-production-like-secret-of-fifty-or-more-characters-0123456789abcdef",
    "ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "REDIS_SENTINELS": "sentinel-0:26379,sentinel-1:26379,sentinel-2:26379",
    "REDIS_PASSWORD": "p",
}


def manage(*args, **env):
    """Run manage.py in a clean production-like environment."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DEBUG", "HTTPS", "DATABASE_URL", "REDIS_URL")}
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args],
                          env={**clean, **PRODUCTION_ENV, **env}, capture_output=True,
                          text=True, cwd=REPO)


def test_check_deploy_reports_nothing():
    """`manage.py check --deploy --fail-level DEBUG` is silent for production settings."""
    result = manage("check", "--deploy", "--fail-level", "DEBUG")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (0 silenced)" in result.stdout


def test_secret_key_is_required_outside_debug():
    """Without SECRET_KEY and with DEBUG off, settings refuse to load."""
    result = manage("check", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_production_settings_select_the_sentinel_layer_and_cache():
    """REDIS_SENTINELS selects our Sentinel-aware layer, django-redis cache and cached sessions."""
    code = ("from django.conf import settings as s;"
            "print(s.CHANNEL_LAYERS['default']['BACKEND']);"
            "print(s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0]['master_name']);"
            "print(s.CACHES['default']['OPTIONS']['CLIENT_CLASS']);"
            "print(s.SESSION_ENGINE); print(s.SECURE_PROXY_SSL_HEADER)")
    result = manage("shell", "--no-imports", "-c", code)
    assert result.stdout.split("\n")[:5] == [
        "app.realtime.layer.channel_layer.ResilientRedisChannelLayer",
        "chanfleet",
        "django_redis.client.SentinelClient",
        "django.contrib.sessions.backends.cached_db",
        "('HTTP_X_FORWARDED_PROTO', 'https')",
    ], result.stderr
