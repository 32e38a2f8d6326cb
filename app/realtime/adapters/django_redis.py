"""django-redis's private API: a cache backend whose Redis client is one per process, and
the Redis key and encoding of a cached session.

Relied on, from `django_redis.cache.RedisCache`: the `_client` attribute behind its `client`
property, and `_server`, `_params` and `_client_cls`, from which it builds that client; from
its client (`django_redis.client.DefaultClient` and subclasses): `make_key` and `decode`, the
key a value is stored under and how a stored value is read back.
"""

import threading

from django.conf import settings
from django.core.cache import caches
from django_redis.cache import RedisCache

PACKAGE = "django-redis"
SUPPORTED = ">=7.0,<7.1"

_clients: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


class SharedClientRedisCache(RedisCache):
    """A django-redis RedisCache whose client, Sentinel manager and pools are process-wide.

    Django keeps cache backends in an asgiref ``Local``, which is per asyncio task. Under daphne
    each WebSocket is a task, so the stock backend builds a new django-redis client (a Sentinel
    manager with a client per sentinel, a master pool) on every handshake's session lookup and
    keeps it for the socket's life: a large part of an idle socket's memory (docs/benchmarks.md).
    redis-py clients are thread-safe, so one per settings is enough; the backend object stays
    per task, as Django expects.
    """

    @property
    def client(self):
        """The process's client for these settings, created on first use."""
        if self._client is None:
            key = (repr(self._server), repr(sorted(self._params.items(), key=str)))
            with _lock:
                client = _clients.get(key)
                if client is None:
                    client = _clients[key] = self._client_cls(self._server, self._params, self)
            self._client = client
        return self._client


def session_cache_key(session) -> str | None:
    """The Redis key of a `cached_db` session's cached data, or None if not kept in django-redis.

    Only for a session that has a key: reading one never creates a key.
    """
    if session.session_key is None or not hasattr(session, "cache_key"):
        return None
    cache = caches[settings.SESSION_CACHE_ALIAS]
    if not isinstance(cache, RedisCache):
        return None
    return str(cache.client.make_key(session.cache_key))


def decode_session(raw: bytes) -> dict:
    """A cached session's data from the bytes django-redis stored."""
    return caches[settings.SESSION_CACHE_ALIAS].client.decode(raw)
