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
"""

from __future__ import annotations

from redis import asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

PACKAGE = "redis"
SUPPORTED = ">=8.1,<8.2"


class BlockingSentinelConnectionPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel master pool of at most `max_connections`; callers past it wait `timeout`."""


def create_pool(host: dict) -> aioredis.ConnectionPool:
    """A bounded, waiting pool for a channels_redis-style host dict (`address` or Sentinel).

    The host's `max_connections` bounds it and `pool_timeout` is how long a caller waits for
    a connection (then redis-py raises ConnectionError, a transient error to its callers).
    """
    host = dict(host)
    host["timeout"] = host.pop("pool_timeout", 10.0)
    if "address" in host:
        return aioredis.BlockingConnectionPool.from_url(host.pop("address"), **host)
    master_name = host.pop("master_name")
    sentinel = Sentinel(host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None))
    return BlockingSentinelConnectionPool(master_name, sentinel, **host)
