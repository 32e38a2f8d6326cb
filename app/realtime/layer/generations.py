"""Process-local caches invalidated across every process through generation tokens in Redis.

A cached value is stored with the token its generation key held when the value was read
from the database, and is used only while Redis still holds that token. A change bumps the
key (a fresh random token, never a counter: a key that expired and was set again can never
come back to an old value) after its transaction commits, so the next reader anywhere sees a
different token and reads the database again.

Readers must read the token BEFORE the database: a change committed between the two then
leaves the entry with a token that is already out of date, never a current token next to old
data.

Tokens live in Redis, not in the database, so a bump can be lost: a failover that promotes a
replica the bump had not reached yet, or Redis unreachable when the change commits. Every
entry therefore also expires after `HANDSHAKE_FACTS_TTL` seconds, the longest a lost bump
can keep an old value in use.

Queryset `.update()`, `bulk_create()`, `bulk_update()` and raw SQL send no model signals:
code that changes a cached model that way must call `bump_on_commit()` itself (see
app/chat/signals.py for what is cached and under which keys).
"""

import asyncio
import logging
import threading
import time
import uuid

import redis
from django.conf import settings
from django.db import transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.realtime.layer.retrying import sentinel_kwargs
from app.realtime.layer.store import get_store
from app.realtime.ops.background import spawn_keyed

logger = logging.getLogger(__name__)

# Keys of entities nobody reads for a day need not stay in Redis; an expired key gets a
# fresh token when next read, so it only makes the next reader load again.
KEY_TTL = 86400


async def tokens(keys: list[str]) -> list[str]:
    """The generation tokens of these keys, in one round trip when all are set."""
    return await get_store().generations(keys, KEY_TTL)

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def _sync_client(connection: dict) -> redis.Redis:
    """A synchronous client for signal handlers (gunicorn workers, the database thread)."""
    name = repr(sorted(connection.items(), key=str))
    with _lock:
        client = _clients.get(name)
        if client is None:
            common = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}
            if "address" in connection:
                client = redis.Redis.from_url(connection["address"], **common)
            else:
                # The store's sentinel options carry an asyncio retry policy; a sync
                # client takes the same options with redis-py's sync one.
                options = {**sentinel_kwargs(connection.get("sentinel_kwargs")),
                           "retry": Retry(NoBackoff(), 0)}
                sentinel = redis.Sentinel(connection["sentinels"], sentinel_kwargs=options)
                client = sentinel.master_for(
                    connection["master_name"], password=connection.get("password"),
                    db=connection.get("db", 0), **common)
            _clients[name] = client
        return client


def bump(*keys: str) -> None:
    """Give each generation key a new token now; a failure is logged, never raised."""
    if not keys:
        return
    tokens = {key: uuid.uuid4().hex for key in keys}
    connection = settings.REDIS_CONNECTION
    if not connection:
        get_store().set_generations(tokens)
        return
    try:
        pipe = _sync_client(connection).pipeline(transaction=False)
        for key, token in tokens.items():
            pipe.set(f"{settings.REDIS_PREFIX}:gen:{key}", token, ex=KEY_TTL)
        pipe.execute()
    except Exception:
        # Runs after commit, in the code that committed: it must never fail that code. The
        # cached values stay in use until their TTL runs out (see the module docstring).
        logger.warning("cache generations not bumped: %s", ", ".join(keys), exc_info=True)


def bump_on_commit(*keys: str) -> None:
    """Bump the keys once the current transaction commits (at once outside a transaction)."""
    if keys:
        transaction.on_commit(lambda: bump(*keys))


class FactsCache:
    """Values by key, each valid while its generation token is unchanged and younger than TTL."""

    def __init__(self, max_entries: int = 100_000):
        self.entries: dict[object, tuple[str, float, object]] = {}
        self.max_entries = max_entries
        self.loading: dict[tuple[object, str], asyncio.Task] = {}

    async def value(self, key, token: str, load):
        """The value kept under `key` for `token`, else `await load()`, then kept for it.

        Callers missing the same key and token together share one load: after a crash, the
        process taking over finds none of its clients' users cached, and each of their
        handshakes, all arriving at once, would otherwise read the same user again.
        """
        hit, value = self.get(key, token)
        if hit:
            return value
        return await self.shared((key, token), lambda: self._load(key, token, load))

    async def shared(self, name, load):
        """`await load()`, one load for every caller asking under `name` while it runs.

        Each caller awaits it through `asyncio.shield`: one caller's cancellation stops
        nobody else's.
        """
        pending = self.loading.get(name)
        if pending is None:
            pending = spawn_keyed(self.loading, name, load())
        return await asyncio.shield(pending)

    async def _load(self, key, token: str, load):
        value = await load()
        self.put(key, token, value)
        return value

    def get(self, key, token: str) -> tuple[bool, object]:
        """(True, value) when an entry was read under this token and has not expired."""
        entry = self.entries.get(key)
        if entry is not None and entry[0] == token and entry[1] > time.monotonic():
            return True, entry[2]
        return False, None

    def put(self, key, token: str, value, expires: float | None = None) -> None:
        """Keep a value read from the database after `token` was read.

        It expires HANDSHAKE_FACTS_TTL from now, or at `expires` (a `time.monotonic()`) for
        a value made of other entries, which must not outlive them.
        """
        self.entries.pop(key, None)
        if len(self.entries) >= self.max_entries:
            self.entries.pop(next(iter(self.entries)))  # the oldest insertion goes first
        if expires is None:
            expires = time.monotonic() + settings.HANDSHAKE_FACTS_TTL
        self.entries[key] = (token, expires, value)

    def clear(self) -> None:
        """Forget every entry and the loads in flight (a later caller loads again)."""
        self.entries.clear()
        self.loading.clear()
