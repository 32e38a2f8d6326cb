"""The Redis store (rate limits, presence) through a Sentinel failover."""

import asyncio
import time

import pytest
from redis import exceptions as redis_errors

from app.realtime.layer.store import RedisStore, connect_redis
from deploy.processes.children import free_port


def sentinel_store(topology, sentinels=None, retry_seconds=20.0) -> RedisStore:
    """A store like production's, reaching the topology's master through its sentinels."""
    host = {**topology.channel_layer_host(), "max_connections": 50}
    if sentinels is not None:
        host["sentinels"] = sentinels
    return RedisStore(connect_redis(host), "t", retry_seconds=retry_seconds)


async def test_store_calls_ride_through_a_failover_and_answer_soon_after_promotion(
        sentinel_topology):
    store = sentinel_store(sentinel_topology)
    assert await store.hit("sender", 60) == 1
    await store.presence_touch("room:1", "alice", 60)
    old = sentinel_topology.kill_master()
    killed = time.monotonic()
    promotion = asyncio.ensure_future(asyncio.to_thread(sentinel_topology.wait_for_failover, old))
    count = await store.hit("sender", 60)  # retried until the new master answers
    answered = time.monotonic() - killed
    promoted = await promotion
    print(f"store answered {answered:.2f}s after kill -9, all sentinels named the new master "
          f"{promoted:.2f}s after")
    # 2 if the first count reached the replica before the kill, 1 if that write was lost.
    assert count in (1, 2)
    assert await store.presence_members("room:1") in (["alice"], [])
    # Retried every 50-250 ms, not on an exponential schedule: the first step after the new
    # master answers comes within a quarter second or so, whenever in the schedule that is.
    assert answered - promoted < 1.0
    await store.client.aclose()


async def test_a_dead_sentinel_first_in_the_list_costs_no_back_off(sentinel_topology):
    """Sentinel lookups move on to the next sentinel at once (no retry inside its client)."""
    dead = ("127.0.0.1", free_port())
    store = sentinel_store(sentinel_topology, sentinels=[dead, *sentinel_topology.sentinels])
    started = time.monotonic()
    assert await store.hit("sender", 60) == 1
    # redis-py's default sentinel client retried a refused connection three times, sleeping
    # up to 2, 4 and 8 s, before the next sentinel was asked.
    assert time.monotonic() - started < 1.0
    await store.client.aclose()


async def test_with_no_redis_a_store_call_gives_up_after_its_retry_window():
    """No Redis at all: the call raises after retry_seconds instead of hanging for minutes."""
    store = RedisStore(connect_redis({"address": f"redis://127.0.0.1:{free_port()}/0"}), "t",
                       retry_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(redis_errors.ConnectionError):
        await store.hit("sender", 60)
    # (It took 9.5 s before, whatever the layer's window: redis-py's 12 reconnect attempts.)
    assert time.monotonic() - started < 2.0


async def test_hits_count_up_in_their_window_and_the_counter_expires_after_it(redis_url):
    """One atomic count per hit; the window's key outlives the window by a second at most."""
    store = RedisStore(connect_redis({"address": redis_url}), "t-hit", retry_seconds=1.0)
    # An hour's window: three hits a few ms apart straddle its edge once a year of runs.
    assert [await store.hit("counted", 3600) for _ in range(3)] == [1, 2, 3]
    keys = [key async for key in store.client.scan_iter("t-hit:rl:counted:*")]
    assert len(keys) == 1
    assert 3599 <= await store.client.ttl(keys[0]) <= 3601
    await store.client.delete(*keys)
    await store.client.aclose()


@pytest.fixture(params=["redis", "memory"])
async def either_store(request):
    """The Redis store on a real redis-server, and the in-process one: they must agree."""
    if request.param == "memory":
        from app.realtime.layer.store import MemoryStore
        yield MemoryStore()
        return
    redis_url = request.getfixturevalue("redis_url")
    store = RedisStore(connect_redis({"address": redis_url}), "grace", retry_seconds=1)
    yield store
    await store.client.aclose()


async def test_a_kept_leave_lasts_until_its_time_past_the_entry_s_ttl_then_settles(either_store):
    """presence_leave(..., until) keeps the room's entry until then exactly; settle drops it."""
    store = either_store
    await store.presence_touch_many([("room:1:7", "chan"), ("room:1", "7")], 0.5)
    until = time.time() + 1.2
    assert await store.presence_leave([("room:1:7", "chan")], "room:1:7", ("room:1", "7"),
                                      until) == -1
    await asyncio.sleep(0.8)  # past the entry's own TTL, within the grace
    assert await store.presence_members("room:1") == ["7"]
    assert await store.presence_settle("room:1:7", ("room:1", "7"), until) is True
    assert await store.presence_members("room:1") == []


def test_redis_replies_are_parsed_by_hiredis():
    """hiredis is pinned for the image, so redis-py reads every reply with its C parser, not
    the pure-Python one (a handshake's MGET of a room's user tokens is much of its Redis CPU)."""
    from redis._parsers import _AsyncHiredisParser
    from redis.asyncio.connection import DefaultParser

    assert DefaultParser is _AsyncHiredisParser
