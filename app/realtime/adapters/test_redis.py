"""The bounded, waiting Redis pools, against real Redis and Sentinel processes."""

import asyncio
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

from app.realtime.adapters.redis import (
    BlockingSentinelConnectionPool,
    HiredisPacking,
    create_pool,
    hiredis_packing,
    pack,
)
from app.realtime.layer.store import connect_redis


def connections(pool) -> int:
    """Connections a pool has opened (idle and in use)."""
    return len(pool._available_connections) + len(pool._in_use_connections)


async def test_a_burst_of_callers_shares_the_pools_few_connections(redis_url):
    """Five hundred concurrent commands on a pool of five: all answered, five connections."""
    client = connect_redis({"address": redis_url, "max_connections": 5})
    pool = client.connection_pool
    before = (await client.info("stats"))["total_connections_received"]
    answers = await asyncio.gather(*(client.incr("burst") for _ in range(500)))
    assert sorted(answers) == list(range(1, 501))
    assert connections(pool) == 5
    # The INFO before the burst opened the first; the burst opened at most four more.
    assert (await client.info("stats"))["total_connections_received"] - before <= 4
    await client.aclose()


async def test_sentinel_pool_waits_too_and_follows_a_failover(sentinel_topology):
    """The Sentinel master pool is bounded the same way, and after a failover its
    connections reach the new master."""
    host = {**sentinel_topology.channel_layer_host(), "max_connections": 4}
    client = connect_redis(host)
    assert isinstance(client.connection_pool, BlockingSentinelConnectionPool)
    await asyncio.gather(*(client.incr("burst") for _ in range(200)))
    assert connections(client.connection_pool) == 4
    old = sentinel_topology.kill_master()
    await asyncio.to_thread(sentinel_topology.wait_for_failover, old)
    deadline = time.monotonic() + 20
    while True:
        try:
            await asyncio.gather(*(client.set(f"after:{n}", 1) for n in range(50)))
            break
        except Exception:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    role = await client.execute_command("ROLE")
    assert role[0] in (b"master", "master")
    assert connections(client.connection_pool) <= 4
    await client.aclose()


async def test_a_caller_waits_no_longer_than_the_pool_timeout():
    """With every connection held, the next caller gets ConnectionError after pool_timeout."""
    pool = create_pool({"address": "redis://127.0.0.1:1/0", "max_connections": 1,
                        "pool_timeout": 0.2})
    held = pool.make_connection()  # counted as opened, never connected
    pool._in_use_connections.add(held)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match="No connection available"):
        await pool.get_connection()
    assert 0.15 < time.monotonic() - started < 2


ODD_COMMANDS = [
    ("SET", "key", "välue"),
    ("ZADD", b"group", 1.5, "member", 0.1, "other"),
    ("SET", "big", b"x" * 100_000),
    ("SET", "view", memoryview(b"from a view")),
    ("INCRBY", "counter", -(2**40)),
    ("CLIENT SETNAME", "named"),
    (b"CONFIG GET", b"maxmemory"),
]


@pytest.mark.parametrize("args", ODD_COMMANDS, ids=lambda args: str(args[0]))
def test_hiredis_packs_a_command_as_redis_pys_own_encoder_does(args):
    """Strings, bytes, views, floats, big integers and two-word commands: the same bytes."""
    from redis.asyncio.connection import Connection

    assert pack(args) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("value", [True, None, [1]])
def test_a_value_redis_cannot_store_is_refused_as_redis_py_refuses_it(value):
    """redis-py's DataError, before anything is written."""
    with pytest.raises(DataError):
        pack(("SET", "key", value))


async def test_the_pools_connections_pack_with_hiredis_and_redis_reads_them(redis_url):
    """A pool's commands and pipelines reach a real Redis intact through the hiredis packing."""
    client = connect_redis({"address": redis_url, "max_connections": 2})
    assert issubclass(client.connection_pool.connection_class, HiredisPacking)
    await client.set("plain", "välue")
    async with client.pipeline(transaction=True) as pipe:
        pipe.set("big", b"x" * 100_000).zadd("group", {"member": 1.5}).get("plain")
        assert (await pipe.execute())[2] == "välue".encode()
    assert len(await client.get("big")) == 100_000
    assert await client.zscore("group", "member") == 1.5
    with pytest.raises(DataError):
        await client.set("bad", None)
    await client.aclose()


def test_the_sentinel_pools_connections_pack_with_hiredis_too():
    """Sentinel-managed connections keep their class's behaviour, with hiredis packing mixed in."""
    from redis.asyncio.sentinel import SentinelManagedConnection

    pool = create_pool({"sentinels": [("127.0.0.1", 1)], "master_name": "mymaster"})
    assert issubclass(pool.connection_class, SentinelManagedConnection)
    assert issubclass(pool.connection_class, HiredisPacking)
    assert hiredis_packing(pool.connection_class) is pool.connection_class
