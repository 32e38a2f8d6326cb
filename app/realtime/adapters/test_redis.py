"""The bounded, waiting Redis pools, against real Redis and Sentinel processes."""

import asyncio
import time

import pytest
from redis import asyncio as aioredis
from redis.asyncio import connection as redis_connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.realtime.adapters.redis import (
    BlockingSentinelConnectionPool,
    HiredisPacking,
    create_pool,
    execute_bounded,
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


def bounded_client(redis_url: str, **host) -> aioredis.Redis:
    """A client on one of our pools with a short socket timeout."""
    return aioredis.Redis(connection_pool=create_pool(
        {"address": redis_url, "socket_timeout": 0.5, **host}))


def count_read_timeouts(monkeypatch) -> list:
    """Record each timeout redis-py's connections set up around a read (the socket timeout's;
    the pool's wait for a connection has its own)."""
    made = []

    def counted(delay):
        if delay == 0.5:
            made.append(delay)
        return asyncio.timeout(delay)
    monkeypatch.setattr(redis_connection, "async_timeout", counted)
    return made


async def test_a_bounded_pipeline_reads_its_replies_with_no_timeout_each(redis_url, monkeypatch):
    """Fifty replies read with no timeout of their own; the same pipeline unbounded sets up
    fifty (what the adapter was written against)."""
    client = bounded_client(redis_url)
    await client.ping()  # connected: no connect timeout below
    made = count_read_timeouts(monkeypatch)
    pipe = client.pipeline(transaction=False)
    for n in range(50):
        pipe.set(f"bounded:{n}", n)
    assert await execute_bounded(pipe, 0.5) == [True] * 50
    assert made == []
    for n in range(50):
        pipe.get(f"bounded:{n}")
    assert await pipe.execute() == [str(n).encode() for n in range(50)]
    assert made == [0.5] * 50
    await client.aclose()


async def test_a_paused_redis_fails_the_whole_round_trip_in_time_and_no_reply_is_left(
        redis_url):
    """Redis answering nobody for 1.5 s: the pipeline raises redis-py's TimeoutError after its
    0.5 s, and the next pipeline on the pool reads its own replies, not the late ones."""
    client = bounded_client(redis_url, max_connections=1)
    admin = aioredis.Redis.from_url(redis_url)
    await client.set("late", "old")
    await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    pipe = client.pipeline(transaction=False)
    pipe.get("late")
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError, match="1 commands was not answered within 0.5 s"):
        await execute_bounded(pipe, 0.5)
    assert 0.45 < time.monotonic() - started < 1.2
    await asyncio.sleep(1.2)  # the pause is over
    await client.set("late", "new")
    pipe = client.pipeline(transaction=False)
    pipe.get("late")
    pipe.echo("mine")
    assert await execute_bounded(pipe, 0.5) == [b"new", b"mine"]
    await client.aclose()
    await admin.aclose()


async def test_the_wait_for_a_pooled_connection_is_not_counted(redis_url):
    """The pool's only connection held for twice the bound: the pipeline waits, then runs."""
    client = bounded_client(redis_url, max_connections=1)
    await client.ping()
    pool = client.connection_pool
    held = await pool.get_connection()
    pipe = client.pipeline(transaction=False)
    pipe.echo("after the wait")
    waiting = asyncio.ensure_future(execute_bounded(pipe, 0.5))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    await pool.release(held)
    assert await waiting == [b"after the wait"]
    await client.aclose()
