"""django-redis's cache backend with one client per process instead of one per asyncio task."""

import threading

from django_redis.cache import RedisCache

_clients: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


class SharedClientRedisCache(RedisCache):
    """A django-redis RedisCache whose client, Sentinel manager and pools are process-wide.

    Django keeps cache backends in an asgiref ``Local``, which is per asyncio task. Under daphne
    each WebSocket is a task, so the stock backend builds a new django-redis client (a Sentinel
    manager with a client per sentinel, a master pool) on every handshake's session lookup and
    keeps it for the socket's life. With this class (and the other fixes of docs/benchmarks.md)
    resident memory per idle WebSocket fell from 135.6 to 56.4 KiB. redis-py clients are
    thread-safe, so one per settings is enough; the backend object stays per task, as Django
    expects.
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
