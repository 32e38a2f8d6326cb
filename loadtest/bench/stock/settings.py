"""Stock settings: the chapter's project with one plain Redis and nothing tuned.

Environment: STOCK_REDIS_URL (required), STOCK_DATABASE_URL (PostgreSQL) or STOCK_DB (SQLite
file), and
STOCK_REDIS_MAX_CONNECTIONS (unset: redis-py's default pool; see docs/benchmarks.md).
"""

import os

SECRET_KEY = os.environ.get("STOCK_SECRET_KEY", "bench-stock-not-secret-0123456789abcdefghijkl")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "loadtest.bench.stock",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "loadtest.bench.stock.urls"
ASGI_APPLICATION = "loadtest.bench.stock.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TEMPLATES = []
# The same database as chanfleet in the same run: PostgreSQL when the benchmark runs with
# DATABASE_URL (Django's default CONN_MAX_AGE 0, as the chapter leaves it), else SQLite with
# chanfleet's embedded options (WAL), so the comparison is about the channel layer and the
# consumers, not the database engine.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("STOCK_DB", "/tmp/chanfleet-bench-stock.sqlite3"),
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
}
if os.environ.get("STOCK_DATABASE_URL"):
    import dj_database_url

    DATABASES = {"default": dj_database_url.parse(os.environ["STOCK_DATABASE_URL"])}
# Users are created by the benchmark with sessions written directly; hashing is irrelevant.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

_host = os.environ.get("STOCK_REDIS_URL", "redis://127.0.0.1:6379/0")
if os.environ.get("STOCK_REDIS_MAX_CONNECTIONS"):
    _host = {"address": _host, "max_connections": int(os.environ["STOCK_REDIS_MAX_CONNECTIONS"])}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [_host]},
    }
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
