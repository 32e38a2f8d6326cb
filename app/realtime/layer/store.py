"""Shared counters, presence, cache generations and room positions, kept in the same
Sentinel-managed Redis as the channel layer.

`get_store()` returns a Redis-backed store when Redis is configured and an in-process one
otherwise (for `make dev` and unit tests), so callers never branch on the deployment.
"""

import asyncio
import functools
import time
import uuid

from django.conf import settings
from redis import asyncio as aioredis
from redis import exceptions as redis_errors

from app.realtime.adapters import redis as redis_adapter
from app.realtime.layer.coalescer import Coalescer
from app.realtime.layer.retrying import no_retry, retry_transient, sentinel_kwargs
from app.realtime.ops import metrics


def connect_redis(connection: dict) -> aioredis.Redis:
    """Build an asyncio Redis client from a channels_redis-style host dict.

    Its pool is bounded and makes callers wait (app/realtime/adapters/redis.py). The client
    never retries on its own: RedisStore's methods ride out a failover themselves.
    """
    host = {key: connection[key] for key in ("address", "sentinels", "master_name", "password",
                                              "db", "max_connections", "pool_timeout")
            if key in connection}
    if "sentinels" in host:
        host["sentinel_kwargs"] = sentinel_kwargs(connection.get("sentinel_kwargs"))
    host.update({
        "retry": no_retry(),
        "health_check_interval": 10,
        "socket_keepalive": True,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
    })
    return aioredis.Redis(connection_pool=redis_adapter.create_pool(host))


def riding_failover(operation: str):
    """Run a store method again on a transient Redis error, up to the store's retry_seconds.

    The whole method runs again, so a pipeline is built afresh on the new master. A write a
    full Redis refuses (OOM) is not retried: it is counted under `operation` and raised.
    """
    def decorate(method):
        @functools.wraps(method)
        async def run(self, *args):
            try:
                return await retry_transient(method, self, *args, seconds=self.retry_seconds)
            except redis_errors.OutOfMemoryError:
                metrics.REDIS_OOM_REFUSALS.labels(operation).inc()
                raise
        return run
    return decorate


class RedisStore:
    """Rate-limit counters and presence sorted sets in Redis, shared by every process."""

    def __init__(self, client: aioredis.Redis, prefix: str, retry_seconds: float):
        self.client = client
        # A handshake's small reads and writes go through it: in a storm, the handshakes of
        # one loop turn share a round trip (app/realtime/layer/coalescer.py).
        self.batch = Coalescer(client).run
        self.prefix = prefix
        # settings.REDIS_RETRY_SECONDS, as long as the channel layer retries a group send: a
        # failover (2-3 s with down-after 1000 ms) is ridden out; past that, callers answer
        # `unavailable`.
        self.retry_seconds = retry_seconds

    def key(self, *parts: object) -> str:
        """Build a namespaced key."""
        return ":".join([self.prefix, *map(str, parts)])

    @riding_failover("rate_limit")
    async def hit(self, key: str, window: float) -> int:
        """Count one event in a fixed window and return the count so far in that window."""
        bucket = int(time.time() // window)
        # One script instead of MULTI/INCR/EXPIRE/EXEC: the same atomic count, but one
        # command to pack and one reply to parse on every chat message's path (the
        # transaction's four cost this call more CPU than a group send).
        (count,) = await self.batch(lambda pipe: pipe.eval(
            HIT_LUA, 1, self.key("rl", key, bucket), int(window) + 1))
        return int(count)

    @riding_failover("presence")
    async def presence_touch(self, scope: str, member: str, ttl: float) -> None:
        """Mark a member present in a scope until now + ttl."""
        key = self.key("presence", scope)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, {member: time.time() + ttl}, gt=True)
        pipe.expire(key, int(ttl) + 5)
        await pipe.execute()

    @riding_failover("presence")
    async def presence_touch_many(self, entries: list[tuple[str, str]], ttl: float) -> None:
        """Refresh several (scope, member) entries in one round trip, one ZADD per scope."""
        deadline = time.time() + ttl
        by_key: dict[str, dict[str, float]] = {}
        for scope, member in entries:
            by_key.setdefault(self.key("presence", scope), {})[member] = deadline

        def build(pipe):
            for key, members in by_key.items():
                # GT: a member kept by several entries (a user's sockets) keeps the latest
                # deadline.
                pipe.zadd(key, members, gt=True)
                pipe.expire(key, int(ttl) + 5)
        await self.batch(build)

    @riding_failover("presence")
    async def presence_members(self, scope: str) -> list[str]:
        """List members whose entries have not expired, dropping the expired ones."""
        pipe = self.client.pipeline(transaction=False)
        self._read_members(pipe, scope)
        _, members = await pipe.execute()
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    @riding_failover("presence")
    async def room_presence(self, scope: str, room_id: int) -> tuple[list[str], int | None]:
        """A room's presence members and its recorded position (`room_position`): one trip."""
        def build(pipe):
            self._read_members(pipe, scope)
            pipe.get(self.key("seq", room_id))
        _, members, position = await self.batch(build)
        return ([m.decode() if isinstance(m, bytes) else m for m in members],
                int(position) if position is not None else None)

    @riding_failover("presence")
    async def presence_leave(self, entries: list[tuple[str, str]], rest: str,
                             parent: tuple[str, str], until: float | None = None) -> int:
        """Remove several (scope, member) entries; return how many live ones `rest` still holds.

        When none, `parent`'s (scope, member) is removed too, in the same script: no join can
        slip between the count and the removal (a join touches `rest` before `parent`). With
        `until` (a time), the parent entry is kept until then instead, and -1 is returned if
        it was there: `presence_settle` removes it at that time unless a join raised it.
        """
        keys = [self.key("presence", rest), self.key("presence", parent[0]),
                *(self.key("presence", scope) for scope, _ in entries)]
        (left,) = await self.batch(lambda pipe: pipe.eval(
            LEAVE_LUA, len(keys), *keys, time.time(), parent[1],
            until if until is not None else "", *(member for _, member in entries)))
        return int(left)

    @riding_failover("presence")
    async def presence_settle(self, rest: str, parent: tuple[str, str], until: float) -> bool:
        """Remove `parent`'s entry kept by `presence_leave(..., until)`; True if removed now.

        Not removed (False) while `rest` holds a live entry or a join or later leave moved
        the parent's expiry past `until`: the user came back.
        """
        keys = [self.key("presence", rest), self.key("presence", parent[0])]
        (gone,) = await self.batch(lambda pipe: pipe.eval(
            SETTLE_LUA, len(keys), *keys, time.time(), parent[1], until))
        return bool(gone)

    def _read_members(self, pipe, scope: str) -> None:
        key = self.key("presence", scope)
        now = time.time()
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zrangebyscore(key, now, "+inf")

    @riding_failover("generations")
    async def generations(self, keys: list[str], ttl: float) -> list[str]:
        """The current tokens of generation keys (app/realtime/layer/generations.py), one MGET.

        A key not set yet (never bumped, expired, or lost) first gets a fresh token, so a
        value cached under it can never match again once the key is gone.
        """
        if not keys:
            return []
        names = [self.key("gen", k) for k in keys]
        (values,) = await self.batch(lambda pipe: pipe.mget(names))
        missing = [i for i, value in enumerate(values) if value is None]
        if missing:
            pipe = self.client.pipeline(transaction=False)
            for i in missing:
                pipe.set(names[i], uuid.uuid4().hex, nx=True, ex=int(ttl))
                pipe.get(names[i])
            answers = await pipe.execute()
            for n, i in enumerate(missing):
                values[i] = answers[2 * n + 1]
        return [v.decode() if isinstance(v, bytes) else v for v in values]

    async def get(self, key: str) -> bytes | None:
        """The value of a key named in full (the cache's keys): not retried."""
        (value,) = await self.batch(lambda pipe: pipe.get(key))
        return value

    async def room_position(self, room_id: int) -> int | None:
        """The highest committed seq of a room recorded in Redis, or None when unknown.

        Not retried: a caller that gets no answer reads the database instead.
        """
        value = await self.client.get(self.key("seq", room_id))
        return int(value) if value is not None else None

    async def raise_room_positions(self, positions: dict[int, int], ttl: float) -> None:
        """Raise rooms' recorded positions to these seqs (never lowers one), one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for room_id, seq in positions.items():
            pipe.eval(RAISE_LUA, 1, self.key("seq", room_id), int(seq), int(ttl))
        await pipe.execute()

    async def ping(self) -> bool:
        """Check Redis answers."""
        return bool(await self.client.ping())


# The recorded position only ever rises: writers of one room commit in seq order, but their
# raises can reach Redis in any order.
RAISE_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""

# KEYS: the scope whose live entries are counted, the parent scope, then each entry's scope;
# ARGV: now, the parent's member, the time to keep the parent until ("" for no time), then
# each entry's member.
LEAVE_LUA = """
for i = 3, #KEYS do
    redis.call('ZREM', KEYS[i], ARGV[i + 1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
    local keep = tonumber(ARGV[3])
    local score = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[2]))
    if keep and score and score > tonumber(ARGV[1]) then
        -- Kept until then exactly, even past its last refresh's expiry (and the set's).
        redis.call('ZADD', KEYS[2], keep, ARGV[2])
        redis.call('EXPIRE', KEYS[2], math.ceil(keep - tonumber(ARGV[1])) + 5, 'GT')
        return -1
    end
    redis.call('ZREM', KEYS[2], ARGV[2])
end
return left
"""

# KEYS: the scope whose live entries are counted, the parent scope; ARGV: now, the parent's
# member, the time its leave kept it until. A score above that time is a join's (or a later
# leave's, which settles it itself).
SETTLE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) > 0 then
    return 0
end
local score = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[2]))
if score and score > tonumber(ARGV[3]) then
    return 0
end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

HIT_LUA = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return count
"""


class MemoryStore:
    """The same interface kept in this process, for `make dev` and unit tests only."""

    def __init__(self):
        self.counters: dict[str, int] = {}
        self.presence: dict[str, dict[str, float]] = {}
        self.tokens: dict[str, str] = {}
        self.positions: dict[int, int] = {}

    async def hit(self, key: str, window: float) -> int:
        """Count one event in a fixed window and return the count so far in that window."""
        full = f"{key}:{int(time.time() // window)}"
        self.counters[full] = self.counters.get(full, 0) + 1
        return self.counters[full]

    async def presence_touch(self, scope: str, member: str, ttl: float) -> None:
        """Mark a member present in a scope until now + ttl (or later, if it already is)."""
        members = self.presence.setdefault(scope, {})
        members[member] = max(members.get(member, 0.0), time.time() + ttl)

    async def presence_touch_many(self, entries: list[tuple[str, str]], ttl: float) -> None:
        """Refresh several (scope, member) entries."""
        for scope, member in entries:
            await self.presence_touch(scope, member, ttl)

    async def room_presence(self, scope: str, room_id: int) -> tuple[list[str], int | None]:
        """A room's presence members and its recorded position."""
        return await self.presence_members(scope), self.positions.get(room_id)

    async def presence_leave(self, entries: list[tuple[str, str]], rest: str,
                             parent: tuple[str, str], until: float | None = None) -> int:
        """Remove entries; when `rest` holds none, drop `parent` (or keep it until `until`,
        and return -1); how many `rest` holds."""
        for entry_scope, member in entries:
            self.presence.get(entry_scope, {}).pop(member, None)
        left = len(await self.presence_members(rest))
        if not left:
            members = self.presence.get(parent[0], {})
            score = members.get(parent[1])
            if until is not None and score is not None and score > time.time():
                members[parent[1]] = until  # as LEAVE_LUA: kept until then exactly
                return -1
            members.pop(parent[1], None)
        return left

    async def presence_settle(self, rest: str, parent: tuple[str, str], until: float) -> bool:
        """Drop `parent` kept by a leave until `until`, unless the user came back."""
        if await self.presence_members(rest):
            return False
        members = self.presence.get(parent[0], {})
        if members.get(parent[1], 0.0) > until:
            return False
        members.pop(parent[1], None)
        return True

    async def presence_members(self, scope: str) -> list[str]:
        """List members whose entries have not expired."""
        now = time.time()
        entries = self.presence.get(scope, {})
        for member in [m for m, until in entries.items() if until <= now]:
            del entries[member]
        return list(entries)

    async def generations(self, keys: list[str], ttl: float) -> list[str]:
        """The current tokens of generation keys (a fresh one for a key not set yet)."""
        return [self.tokens.setdefault(k, uuid.uuid4().hex) for k in keys]

    def set_generations(self, tokens: dict[str, str]) -> None:
        """Set generation tokens (called from sync code: signals after commit)."""
        self.tokens.update(tokens)

    async def get(self, key: str) -> bytes | None:
        """The value of a key named in full (the cache's keys): not retried."""
        (value,) = await self.batch(lambda pipe: pipe.get(key))
        return value

    async def room_position(self, room_id: int) -> int | None:
        """The highest committed seq of a room recorded here, or None when unknown."""
        return self.positions.get(room_id)

    async def raise_room_positions(self, positions: dict[int, int], ttl: float) -> None:
        """Raise rooms' recorded positions to these seqs (never lowers one)."""
        for room_id, seq in positions.items():
            self.positions[room_id] = max(seq, self.positions.get(room_id, -1))

    async def ping(self) -> bool:
        """Always reachable."""
        return True


_stores: dict[asyncio.AbstractEventLoop | None, object] = {}


def get_store():
    """Return this event loop's store (Redis clients are bound to the loop that made them)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    store = _stores.get(loop)
    if store is None:
        if settings.REDIS_CONNECTION:
            store = RedisStore(connect_redis(settings.REDIS_CONNECTION), settings.REDIS_PREFIX,
                               settings.REDIS_RETRY_SECONDS)
        else:
            store = _stores.setdefault("memory", MemoryStore())
        for old in [k for k in _stores if k not in (None, "memory") and k.is_closed()]:
            del _stores[old]
        _stores[loop] = store
    return store


def reset_stores() -> None:
    """Forget every store (tests switch Redis servers between cases)."""
    _stores.clear()
