"""Settings for chanfleet, read from environment variables only (12-factor).

Every variable, with its default, is listed in `.env.example` and the README.
"""

import os
import socket
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str | None = None) -> str | None:
    """Read one environment variable, treating an empty value as unset."""
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable (1/true/yes/on)."""
    value = env(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    """Read a comma-separated environment variable as a list of non-empty items."""
    return [item.strip() for item in (env(name, default) or "").split(",") if item.strip()]


# ---------------------------------------------------------------------------- core
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "insecure-development-key-only-for-debug-runs-000000000000000"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
ROOT_URLCONF = "app.urls"
ASGI_APPLICATION = "app.asgi.application"
WSGI_APPLICATION = "app.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

INSTALLED_APPS = [
    "daphne",
    # Django's admin, its login behind the login throttle (below).
    "app.web.apps.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "app.chat",
    "app.web",
]
MIDDLEWARE = [
    "app.realtime.ops.http_metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A view whose database is unreachable answers 503 database_unavailable, not 500.
    "app.chat.unavailable.DatabaseUnavailableMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(BASE_DIR / "staticfiles")))

# ---------------------------------------------------------------------------- database
# PostgreSQL in production; SQLite in WAL mode as the embedded default.
if env("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(env("DATABASE_URL"), conn_max_age=60)}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env("SQLITE_PATH", str(BASE_DIR / "var" / "chanfleet.sqlite3")),
            # Persistent: opening a SQLite connection (and registering Django's SQL functions)
            # cost ~10% of a WebSocket process's CPU when every database call reconnected.
            "CONN_MAX_AGE": 600,
            # WAL lets readers run while a writer commits; IMMEDIATE avoids lock upgrades failing.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }

# ---------------------------------------------------------------------------- redis
# Either a plain URL (REDIS_URL) or Sentinel (REDIS_SENTINELS + REDIS_MASTER_NAME).
# The cache (sessions, rate limits) and presence use this one Redis; the channel layer uses
# it too, or spreads rooms and process inboxes over REDIS_SHARDS.
REDIS_URL = env("REDIS_URL")
REDIS_SENTINELS = [
    (host, int(port))
    for host, _, port in (item.rpartition(":") for item in env_list("REDIS_SENTINELS"))
]
REDIS_MASTER_NAME = env("REDIS_MASTER_NAME", "chanfleet")
REDIS_PASSWORD = env("REDIS_PASSWORD")
REDIS_SENTINEL_PASSWORD = env("REDIS_SENTINEL_PASSWORD", REDIS_PASSWORD)
REDIS_DB = int(env("REDIS_DB", "0"))
REDIS_PREFIX = env("REDIS_PREFIX", "chanfleet")

REDIS_POOL = {
    # Per pool and process. Callers past it wait for a connection (app/realtime/adapters/
    # redis.py) rather than open one each: a connect storm then reuses a few connections
    # instead of opening hundreds, each with a Sentinel query.
    "max_connections": int(env("REDIS_MAX_CONNECTIONS", "100")),
    # A wait this long means Redis stalls: redis-py raises ConnectionError, retried as any.
    "pool_timeout": float(env("REDIS_POOL_TIMEOUT", "10")),
    # Above channels_redis's 5 s BZPOPMIN, which would otherwise race the read timeout.
    "socket_timeout": 10,
    "socket_connect_timeout": 2,
    "socket_keepalive": True,
}
# How long the channel layer and the store retry through a failover before giving up (the
# layer with LayerUnavailable, callers with `unavailable`): a Sentinel failover takes 2-3 s.
REDIS_RETRY_SECONDS = float(env("GROUP_SEND_RETRY_SECONDS", "8"))
if REDIS_SENTINELS:
    REDIS_CONNECTION = {
        "sentinels": REDIS_SENTINELS,
        "master_name": REDIS_MASTER_NAME,
        "sentinel_kwargs": {"password": REDIS_SENTINEL_PASSWORD} if REDIS_SENTINEL_PASSWORD else {},
        "password": REDIS_PASSWORD,
        "db": REDIS_DB,
        **REDIS_POOL,
    }
elif REDIS_URL:
    REDIS_CONNECTION = {"address": REDIS_URL, **REDIS_POOL}
else:
    REDIS_CONNECTION = None


def _shard(name: str) -> dict:
    """A channel layer host: another master the same sentinels watch, or a Redis URL."""
    if REDIS_SENTINELS:
        return {**REDIS_CONNECTION, "master_name": name}
    return {"address": name, **REDIS_POOL}


# The channel layer's shards (docs/channel-layer.md, "Shards"): Sentinel master names (one
# Sentinel set watches them all) or Redis URLs. Groups and process inboxes are spread over
# them by rendezvous hashing; a failover of one touches only its rooms.
REDIS_SHARDS = env_list("REDIS_SHARDS") or (
    [REDIS_MASTER_NAME] if REDIS_SENTINELS else [REDIS_URL] if REDIS_URL else [])
CHANNEL_LAYER_HOSTS = [_shard(name) for name in REDIS_SHARDS] if REDIS_CONNECTION else []

# ---------------------------------------------------------------------------- channel layer
# Chosen in docs/channel-layer.md: a short group_expiry is safe because consumers refresh
# their memberships on every heartbeat, and it makes a dead process's memberships vanish fast.
CHANNEL_CAPACITY = int(env("CHANNEL_CAPACITY", "1000"))
CHANNEL_EXPIRY = int(env("CHANNEL_EXPIRY", "30"))
GROUP_EXPIRY = int(env("GROUP_EXPIRY", "120"))
# "script" (one Lua script writes every member's process inbox) or "pubsub" (one PUBLISH per
# group send, each process fans out to its own members): docs/channel-layer.md.
CHANNEL_GROUP_FANOUT = env("CHANNEL_GROUP_FANOUT", "script")
if REDIS_CONNECTION:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "app.realtime.layer.channel_layer.ResilientRedisChannelLayer",
            "CONFIG": {
                "hosts": CHANNEL_LAYER_HOSTS,
                "prefix": f"{REDIS_PREFIX}:asgi",
                "capacity": CHANNEL_CAPACITY,
                "expiry": CHANNEL_EXPIRY,
                "group_expiry": GROUP_EXPIRY,
                "retry_seconds": REDIS_RETRY_SECONDS,
                "group_fanout": CHANNEL_GROUP_FANOUT,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# ---------------------------------------------------------------------------- cache and sessions
if REDIS_SENTINELS:
    CACHES = {
        "default": {
            "BACKEND": "app.realtime.adapters.django_redis.SharedClientRedisCache",
            # One URL only: reads from a replica could return a session not replicated yet.
            "LOCATION": [f"redis://{REDIS_MASTER_NAME}/{REDIS_DB}?is_master=1"],
            "KEY_PREFIX": REDIS_PREFIX,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
                "SENTINELS": REDIS_SENTINELS,
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "SENTINEL_KWARGS": {"password": REDIS_SENTINEL_PASSWORD},
                "PASSWORD": REDIS_PASSWORD,
                # A cache outage (a failover) must not fail requests: sessions fall back to
                # the database (cached_db), and nothing else depends on the cache.
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
elif REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "app.realtime.adapters.django_redis.SharedClientRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX,
            "OPTIONS": {"IGNORE_EXCEPTIONS": True},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Session lookups on every WebSocket handshake hit Redis, not the database.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# ---------------------------------------------------------------------------- security
# HTTPS=false only for the plain-HTTP loopback topology; production keeps every protection on.
HTTPS = env_bool("HTTPS", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env_bool("USE_X_FORWARDED_HOST", True)
SECURE_SSL_REDIRECT = HTTPS
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = int(env("SECURE_HSTS_SECONDS", "31536000")) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# ---------------------------------------------------------------------------- realtime
# Tunables of the WebSocket protocol (docs/protocol.md); rates are "count/seconds".
WS_HEARTBEAT_INTERVAL = float(env("WS_HEARTBEAT_INTERVAL", "25"))
WS_INACTIVITY_TIMEOUT = float(env("WS_INACTIVITY_TIMEOUT", "1800"))
WS_MAX_FRAME_BYTES = int(env("WS_MAX_FRAME_BYTES", "16384"))
WS_FRAME_RATE = env("WS_FRAME_RATE", "50/10")
CHAT_MESSAGE_MAX_LENGTH = int(env("CHAT_MESSAGE_MAX_LENGTH", "4000"))
CHAT_MESSAGE_RATE = env("CHAT_MESSAGE_RATE", "20/10")
WS_CONNECT_RATE = env("WS_CONNECT_RATE", "60/60")
# Handshakes a WebSocket process works on at once; the rest wait their turn (see registry.py).
WS_CONNECT_CONCURRENCY = int(env("WS_CONNECT_CONCURRENCY", "8"))
CHAT_HISTORY_SIZE = int(env("CHAT_HISTORY_SIZE", "50"))
# Rooms whose history and recent events each WebSocket process keeps serialised for joins and
# resumes (app/chat/history.py, app/chat/replay.py).
CHAT_HISTORY_CACHE_ROOMS = int(env("CHAT_HISTORY_CACHE_ROOMS", "1000"))
# Stored events of each such room kept serialised for resumes (app/chat/replay.py).
CHAT_REPLAY_CACHE_EVENTS = int(env("CHAT_REPLAY_CACHE_EVENTS", "500"))
# Users' last_seen times are written in batches this many seconds apart (app/chat/last_seen.py).
LAST_SEEN_FLUSH_SECONDS = float(env("LAST_SEEN_FLUSH_SECONDS", "5"))
CHAT_AUTO_CREATE_ROOMS = env_bool("CHAT_AUTO_CREATE_ROOMS", True)
CONTENT_FILTER_WORDS = env_list("CONTENT_FILTER_WORDS", "")
PRESENCE_TTL = float(env("PRESENCE_TTL", "60"))
# A user whose last connection to a room closes stays present this long: back within it (a
# reload, a dropped network), the room hears neither user_left nor user_joined.
CHAT_LEAVE_GRACE = float(env("CHAT_LEAVE_GRACE", "15"))
# The longest a handshake may use a cached user, room or access fact whose invalidation was
# lost in a Redis failover (app/realtime/layer/generations.py).
HANDSHAKE_FACTS_TTL = float(env("HANDSHAKE_FACTS_TTL", "30"))
# How long Redis keeps a room's latest committed seq after its last event.
ROOM_POSITION_TTL = float(env("ROOM_POSITION_TTL", "86400"))
DRAIN_WINDOW = float(env("DRAIN_WINDOW", "10"))
DRAIN_RETRY_MAX_MS = int(env("DRAIN_RETRY_MAX_MS", "3000"))
# Between a socket's `reconnect` frame and its close 1012: frames the client sent before it
# read `reconnect` arrive and are handled (after the close they would be dropped unanswered).
DRAIN_CLOSE_GRACE = float(env("DRAIN_CLOSE_GRACE", "0.5"))
CANARY_INTERVAL = float(env("CANARY_INTERVAL", "5"))
CANARY_FAIL_AFTER = float(env("CANARY_FAIL_AFTER", "20"))
# Seconds a shared dependency (database, Redis) may fail before /readyz turns 503: a short
# outage must not take every pod out of its Service at once (app/realtime/ops/readiness.py).
READINESS_DEPENDENCY_GRACE = float(env("READINESS_DEPENDENCY_GRACE", "120"))
LIVE_UPDATE_PRIVATE_PREFIXES = env_list("LIVE_UPDATE_PRIVATE_PREFIXES", "staff.")
SERVICE_TOKEN = env("SERVICE_TOKEN")
# How this process names itself to clients (`connected.node`) and operators: the pod name.
NODE_NAME = env("POD_NAME") or f"{socket.gethostname()}:{env('PORT', '')}"
# Which role this process plays (set by deploy/entrypoint.sh): http, ws, migrate or dev.
PROCESS_ROLE = env("CHANFLEET_ROLE", "dev")

# ---------------------------------------------------------------------------- login throttling
# Failed logins at /api/login, /login/ and /admin/login/ are counted in Redis, shared by every
# process, per client address, per user name from one address and per user name from every
# address; each lock is twice the one before, up to a cap. Refused attempts get 429 and
# Retry-After. The policy and its reasons: docs/architecture.md "Login throttling".
# Failures of one address, whatever user names it tries, before the address is locked: several
# people behind one NAT share it, so it is higher than a user name's.
LOGIN_ADDRESS_FAILURES = int(env("LOGIN_ADDRESS_FAILURES", "20"))
# Failures of one user name from one address before that pair is locked.
LOGIN_USER_FAILURES = int(env("LOGIN_USER_FAILURES", "5"))
# Failures of one user name from every address together; this lock binds only addresses that
# have failed for the name, so the owner still logs in from anywhere else.
LOGIN_USER_EVERYWHERE_FAILURES = int(env("LOGIN_USER_EVERYWHERE_FAILURES", "50"))
# Seconds after a subject's last failure (or the end of its lock) when its count is forgotten.
LOGIN_FAILURE_WINDOW = float(env("LOGIN_FAILURE_WINDOW", "900"))
# The first lock, in seconds; each next one is twice as long, up to the caps below.
LOGIN_LOCK_SECONDS = float(env("LOGIN_LOCK_SECONDS", "60"))
LOGIN_LOCK_MAX_SECONDS = float(env("LOGIN_LOCK_MAX_SECONDS", "3600"))
# Kept short: a guesser spread over many addresses holds this lock at its cap, and it also
# binds the owner at an address where they mistyped.
LOGIN_USER_EVERYWHERE_LOCK_MAX_SECONDS = float(env("LOGIN_USER_EVERYWHERE_LOCK_MAX_SECONDS", "300"))
# A count of 0 would refuse every login, a time of 0 lock nothing: refuse to start instead.
if min(LOGIN_ADDRESS_FAILURES, LOGIN_USER_FAILURES, LOGIN_USER_EVERYWHERE_FAILURES) < 1 or min(
        LOGIN_FAILURE_WINDOW, LOGIN_LOCK_SECONDS, LOGIN_LOCK_MAX_SECONDS,
        LOGIN_USER_EVERYWHERE_LOCK_MAX_SECONDS) <= 0:
    raise ImproperlyConfigured("LOGIN_* failure counts must be at least 1 and times above 0")

# ---------------------------------------------------------------------------- logging
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
}
