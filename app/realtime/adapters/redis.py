"""redis-py's connection pools, bounded: callers past the limit wait for a connection.

redis-py's asyncio `ConnectionPool` opens a new connection for every caller that finds none
idle, up to `max_connections`, then raises `MaxConnectionsError`. A reconnect storm of a few
hundred concurrent handshakes made each process open hundreds of connections, and each new one
cost a Sentinel query for the master's address and a read of redis-py's own package metadata:
under load the Sentinel queries timed out (`MasterNotFoundError`), which the layer took for a
failover. A pool that makes callers wait instead keeps a few connections busy and opens each
once.

Relied on: that `redis.asyncio.BlockingConnectionPool` (its `get_connection` and `release`
waiting on a condition) and `redis.asyncio.sentinel.SentinelConnectionPool` (its connection
class asking `get_master_address`, `owns_connection`, `reset`) combine by cooperative
inheritance: neither overrides what the other relies on, and both pass their keyword arguments
on to `ConnectionPool.__init__`.

The pools' connections also pack commands with hiredis, as redis-py's synchronous connections
do when it is installed (`HiredisRespSerializer`); its asyncio connections pack them in Python,
a large part of a handshake's CPU. Relied on: that an asyncio connection sends what its
`pack_command(*args)` and `pack_commands(commands)` return (lists of bytes to write) and that
the pool makes its connections from its `connection_class` attribute when it needs one.

A pipeline's replies are read under one timeout for the whole round trip (`execute_bounded`),
not one each: redis-py sets up an asyncio timeout around every reply it reads, and for a
handshake's pipelines, whose replies are already in the buffer when read, that was most of
reading them. Relied on: that a connection's `read_response` reads with no timeout when given
`timeout=math.inf`, that `Pipeline.execute` uses the connection already in its `connection`
attribute and hands it back to the pool in `reset()`, and that a read cancelled midway
disconnects its connection (so no later caller reads a stale reply).
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar

import hiredis
from redis import asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

PACKAGE = "redis"
SUPPORTED = ">=8.1,<8.2"


class BlockingSentinelConnectionPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel master pool of at most `max_connections`; callers past it wait `timeout`."""


def pack(args: tuple) -> bytes:
    """One command in the Redis protocol, packed by hiredis, as redis-py's encoder would.

    A first argument of several words ("CLIENT SETNAME") is split as redis-py splits it; a
    value hiredis does not take (a bool, None) raises redis-py's DataError.
    """
    command = args[0]
    if (b" " if isinstance(command, bytes) else " ") in command:
        args = (*command.split(), *args[1:])
    try:
        return hiredis.pack_command(args)
    except TypeError as error:
        if any(isinstance(arg, (bytearray, memoryview)) for arg in args):
            return pack(tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg
                              for arg in args))
        raise DataError(f"invalid input in {args[0]!r}: {error}") from None


class HiredisPacking:
    """Mixed into a pool's connection class: commands and pipelines packed by hiredis."""

    def pack_command(self, *args) -> list[bytes]:
        """The command's bytes, in the one-element list redis-py writes."""
        return [pack(args)]

    def pack_commands(self, commands) -> list[bytes]:
        """A pipeline's commands, packed into one write."""
        return [b"".join(pack(tuple(args)) for args in commands)]


# Set while execute_bounded's timeout covers the replies this task reads.
_BOUNDED: ContextVar[bool] = ContextVar("redis_round_trip_bounded", default=False)


class RoundTripReads:
    """Mixed into a pool's connection class: no timeout per reply inside `execute_bounded`."""

    async def read_response(self, disable_decoding=False, timeout=None, **options):
        """Read one reply, as redis-py does, with no timeout of its own when one is around it."""
        if timeout is None and _BOUNDED.get():
            timeout = math.inf
        return await super().read_response(disable_decoding, timeout, **options)


async def execute_bounded(pipe: aioredis.client.Pipeline, seconds: float | None) -> list:
    """Run a pipeline (no transaction; errors as replies) with `seconds` for all its replies.

    The wait for a pooled connection comes first and is not counted, as redis-py counts only
    the socket. A round trip not done in time raises redis-py's TimeoutError, and its
    connection is dropped.
    """
    if not len(pipe):
        return []
    if seconds is None:
        return await pipe.execute(raise_on_error=False)
    commands = len(pipe)
    pipe.connection = await pipe.connection_pool.get_connection()
    bounded = _BOUNDED.set(True)
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await pipe.execute(raise_on_error=False)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RedisTimeoutError(
            f"a pipeline of {commands} commands was not answered within {seconds} s") from None
    finally:
        _BOUNDED.reset(bounded)
        if pipe.connection is not None:  # execute never ran to hand it back
            await pipe.reset()


_FAST: dict[type, type] = {}


def hiredis_packing(connection_class: type) -> type:
    """`connection_class` with HiredisPacking and RoundTripReads mixed in (one subclass each)."""
    if issubclass(connection_class, HiredisPacking):
        return connection_class
    fast = _FAST.get(connection_class)
    if fast is None:
        fast = _FAST[connection_class] = type(
            f"HiredisPacking{connection_class.__name__}",
            (HiredisPacking, RoundTripReads, connection_class), {})
    return fast


def create_pool(host: dict) -> aioredis.ConnectionPool:
    """A bounded, waiting pool for a channels_redis-style host dict (`address` or Sentinel).

    The host's `max_connections` bounds it and `pool_timeout` is how long a caller waits for
    a connection (then redis-py raises ConnectionError, a transient error to its callers).
    """
    host = dict(host)
    host["timeout"] = host.pop("pool_timeout", 10.0)
    if "address" in host:
        pool = aioredis.BlockingConnectionPool.from_url(host.pop("address"), **host)
    else:
        master_name = host.pop("master_name")
        sentinel = Sentinel(host.pop("sentinels"),
                            sentinel_kwargs=host.pop("sentinel_kwargs", None))
        pool = BlockingSentinelConnectionPool(master_name, sentinel, **host)
    # The class from_url chose for the address's scheme (TCP, TLS, Unix socket), or Sentinel's.
    pool.connection_class = hiredis_packing(pool.connection_class)
    return pool
