"""The channel layer, the store, the rate limits and the login throttle against a real Redis
that is full (and one that refuses the throttle's scripts).

A full Redis (used memory over maxmemory, policy noeviction) answers every write that may
grow memory with OOM and keeps serving reads and deletions. Here maxmemory is set to one byte
with CONFIG SET, as an operator or a growing dataset would leave it.
"""

import asyncio
import time

import pytest
from redis import exceptions as redis_errors

from app.realtime.adapters.channels_redis import group_key
from app.realtime.layer import login_throttle
from app.realtime.layer.channel_layer import RedisFull, ResilientRedisChannelLayer
from app.realtime.layer.ratelimit import Rate, allow
from app.realtime.layer.store import RedisStore, connect_redis, reset_stores
from app.realtime.ops import metrics
from deploy.processes.redis_nodes import RedisServer


class Memory:
    """A redis-server of this module's own whose maxmemory the tests lower and restore."""

    def __init__(self, server: RedisServer):
        self.server = server
        self.url = server.url
        self.client = server.client()

    def fill(self) -> None:
        """Make Redis full: every write that may grow memory is refused with OOM."""
        self.client.config_set("maxmemory", "1")

    def free(self) -> None:
        """Lift the limit again (what an operator does, or what expiring keys achieve)."""
        self.client.config_set("maxmemory", "0")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One redis-server for this module, apart from the session's (its maxmemory changes)."""
    running = RedisServer(base_dir=tmp_path_factory.mktemp("redis-full"))
    with running:
        yield running


@pytest.fixture
def memory(server):
    """The module's Redis, emptied, with maxmemory lifted again after the test, pass or fail."""
    memory = Memory(server)
    memory.client.flushall()
    yield memory
    memory.free()
    memory.client.close()


@pytest.fixture
async def layer(memory):
    """A layer like production's on that Redis, its reader stopped at teardown."""
    made = ResilientRedisChannelLayer(
        hosts=[{"address": memory.url}], prefix="t", capacity=100, expiry=30, group_expiry=60,
        retry_seconds=20)
    yield made
    await made.stop_readers()


def refusals(operation: str) -> float:
    """This process's count of OOM refusals of one operation."""
    return metrics.REDIS_OOM_REFUSALS.labels(operation)._value.get()


async def test_a_join_refused_by_a_full_redis_raises_redis_full_at_once(memory, layer):
    """No retrying for retry_seconds: the refusal is raised at once, counted, and no outage."""
    channel = await layer.new_channel()
    before = refusals("group_add")
    memory.fill()
    started = time.monotonic()
    with pytest.raises(RedisFull, match="maxmemory"):
        await layer.group_add("room", channel)
    assert time.monotonic() - started < 1.0  # retry_seconds is 20
    assert refusals("group_add") == before + 1
    assert layer.is_available  # Redis answers: not a failover window
    assert layer.refused_since is not None


async def test_group_sends_still_reach_existing_members_while_redis_is_full(memory, layer):
    """The send's script writes a trim first, which needs no memory; Redis then runs it all.

    Live delivery therefore lasts while memberships do. Should a Redis refuse it one day, the
    send raises RedisFull and the chat answers `broadcast_failed` (test_chat_consumer.py).
    """
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    memory.fill()
    receiving = asyncio.ensure_future(layer.receive(channel))
    await layer.group_send("room", {"type": "while full"})
    assert (await asyncio.wait_for(receiving, 5))["type"] == "while full"


async def test_while_full_joins_and_sends_are_refused_but_waiting_messages_are_received(
        memory, layer):
    """Reading pops (no memory needed): a message sent before Redis filled up still arrives."""
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "sent before"})  # waits in Redis: no reader yet
    memory.fill()
    other = await layer.new_channel()
    with pytest.raises(RedisFull):
        await layer.group_add("room", other)
    with pytest.raises(RedisFull):
        await layer.send(other, {"type": "direct"})
    received = await asyncio.wait_for(layer.receive(channel), 5)
    assert received["type"] == "sent before"


async def test_memberships_lost_while_full_all_come_back_with_the_first_write_that_passes(
        memory, layer):
    """One heartbeat slot's refresh after the refusals re-adds every membership of the process."""
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("a", first)
    await layer.group_add("b", second)
    memory.fill()
    # The group keys expire while nothing can refresh them (DEL needs no memory).
    memory.client.delete(group_key(layer, "a"), group_key(layer, "b"))
    before = refusals("memberships")
    await layer.refresh_local_groups({first})  # the heartbeat's refresh: refused, not raised
    assert refusals("memberships") == before + 1
    memory.free()
    await layer.refresh_local_groups({first})  # the next slot, with memory again
    assert layer.refused_since is None
    members = {g: {m.decode() for m in memory.client.zrange(group_key(layer, g), 0, -1)}
               for g in ("a", "b")}
    assert members == {"a": {first}, "b": {second}}
    receiving = asyncio.ensure_future(layer.receive(second))
    await layer.group_send("b", {"type": "live again"})
    assert (await asyncio.wait_for(receiving, 5))["type"] == "live again"


async def test_a_group_send_that_passes_does_not_end_the_refusals(memory, layer):
    """Group sends pass while Redis is full, so they prove nothing and re-add nothing."""
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    memory.fill()
    await layer.refresh_local_groups()
    assert layer.refused_since is not None
    before = refusals("memberships")
    await layer.group_send("room", {"type": "while full"})
    assert refusals("memberships") == before  # no doomed re-adding on every send
    assert layer.refused_since is not None


async def test_store_writes_refused_by_a_full_redis_raise_at_once_and_are_counted(memory):
    """Rate-limit counts and presence refreshes fail fast with OOM; presence reads still work."""
    store = RedisStore(connect_redis({"address": memory.url}), "t", retry_seconds=20)
    await store.presence_touch("room:1", "alice", 60)
    memory.fill()
    counted = refusals("rate_limit"), refusals("presence")
    started = time.monotonic()
    with pytest.raises(redis_errors.OutOfMemoryError):
        await store.hit("sender", 60)
    with pytest.raises(redis_errors.OutOfMemoryError):
        await store.presence_touch_many([("room:1", "bob")], 60)
    assert time.monotonic() - started < 1.0
    assert (refusals("rate_limit"), refusals("presence")) == (counted[0] + 1, counted[1] + 1)
    assert await store.presence_members("room:1") == ["alice"]
    await store.client.aclose()


async def test_rate_limits_let_events_through_while_redis_cannot_count_them(memory, settings):
    """A full Redis cannot count: allow() says yes rather than refusing every chat change."""
    settings.REDIS_CONNECTION = {"address": memory.url}
    settings.REDIS_RETRY_SECONDS = 20
    reset_stores()
    try:
        rate = Rate(1, 3600)
        assert (await allow("user", rate))[0] is True
        assert (await allow("user", rate))[0] is False
        memory.fill()
        assert await allow("user", rate) == (True, 0.0)
        memory.free()
        assert (await allow("user", rate))[0] is False
    finally:
        reset_stores()


async def test_a_full_redis_still_counts_logins(memory, settings):
    """Each throttle script frees before it writes, and Redis lets a script that has written
    finish: the shared counts and locks go on while Redis refuses other writes."""
    settings.REDIS_CONNECTION = {"address": memory.url}
    settings.LOGIN_USER_FAILURES = 2
    reset_stores()
    memory.fill()
    try:
        for _ in range(2):
            attempt = await login_throttle.begin("alice", "203.0.113.7")
            assert isinstance(attempt, login_throttle.Attempt) and not attempt.local
            locks = await login_throttle.settle(attempt, "fail")
        assert [lock.scope for lock in locks] == ["user"]
        refusal = await login_throttle.begin("alice", "203.0.113.7")
        assert isinstance(refusal, login_throttle.Refusal) and refusal.scope == "user"
        assert memory.client.keys("*login*")
    finally:
        reset_stores()


async def test_logins_redis_refuses_to_count_are_counted_and_locked_in_their_process(
        memory, settings):
    """An error no retry mends (here an ACL without EVAL) moves counting here at once."""
    settings.REDIS_CONNECTION = {"address": memory.url}
    settings.LOGIN_USER_FAILURES = 2
    reset_stores()
    login_throttle.LOCAL.clear()
    local_before = metrics.LOGIN_COUNTED_LOCALLY._value.get()
    memory.client.acl_setuser("default", enabled=True, nopass=True, commands=["-eval"])
    try:
        started = time.monotonic()
        for _ in range(2):
            attempt = await login_throttle.begin("alice", "203.0.113.7")
            assert isinstance(attempt, login_throttle.Attempt) and attempt.local
            locks = await login_throttle.settle(attempt, "fail")
        assert time.monotonic() - started < login_throttle.RETRY_SECONDS
        assert [lock.scope for lock in locks] == ["user"]
        refusal = await login_throttle.begin("alice", "203.0.113.7")
        assert isinstance(refusal, login_throttle.Refusal) and refusal.scope == "user"
        assert metrics.LOGIN_COUNTED_LOCALLY._value.get() - local_before == 3
    finally:
        memory.client.acl_setuser("default", enabled=True, nopass=True, commands=["+@all"],
                                  keys=["*"], channels=["*"])
        reset_stores()
        login_throttle.LOCAL.clear()


async def test_an_outage_ending_on_a_full_master_ends_and_leaves_the_reader_running(
        memory, layer):
    """A failover onto a full master: the probe's re-adding is refused, the outage still ends."""
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    receiving = asyncio.ensure_future(layer.receive(channel))  # starts the reader
    await asyncio.sleep(0.1)
    layer._mark_error(redis_errors.ConnectionError("the master went away"))
    memory.fill()
    before = refusals("memberships")
    assert await layer._recover() is True
    assert layer.is_available and layer.refused_since is not None
    assert refusals("memberships") == before + 1
    await layer.group_send("room", {"type": "still delivered"})
    assert (await asyncio.wait_for(receiving, 5))["type"] == "still delivered"
