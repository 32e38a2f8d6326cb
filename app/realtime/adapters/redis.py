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
"""

from __future__ import annotations

import hiredis
from redis import asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import DataError

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


_PACKING: dict[type, type] = {}


def hiredis_packing(connection_class: type) -> type:
    """`connection_class` with HiredisPacking mixed in (one subclass per class)."""
    if issubclass(connection_class, HiredisPacking):
        return connection_class
    packing = _PACKING.get(connection_class)
    if packing is None:
        packing = _PACKING[connection_class] = type(
            f"HiredisPacking{connection_class.__name__}", (HiredisPacking, connection_class), {})
    return packing


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
