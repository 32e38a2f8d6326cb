"""The channel layer over two shards: real redis-servers, and two real Sentinel groups."""

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from app.realtime.adapters.channels_redis import group_key
from app.realtime.layer.channel_layer import ResilientRedisChannelLayer
from app.realtime.layer.test_channel_layer import sentinel_host

MODES = ["script", "pubsub"]


@pytest.fixture
async def processes():
    """make(hosts, mode): a layer standing for one process; readers stopped at teardown."""
    made = []

    def make(hosts, mode, inbox_on=None):
        # A process's inbox lives on the shard its random prefix hashes to: draw until the
        # test gets the shard it asks for.
        for _ in range(200):
            layer = ResilientRedisChannelLayer(
                hosts=hosts, prefix="t", capacity=100, expiry=30, group_expiry=60,
                retry_seconds=20, group_fanout=mode)
            if inbox_on is None or inbox_shard(layer) == inbox_on:
                made.append(layer)
                return layer
        raise AssertionError("no process prefix hashed to the shard asked for")

    yield make
    for layer in made:
        await layer.stop_readers()


def inbox_shard(layer) -> int:
    """The shard holding the process's inbox."""
    return layer.consistent_hash(f"specific.{layer.client_prefix}!")


def group_on(layer, shard: int, stem: str = "room") -> str:
    """A group name that hashes to `shard`."""
    return next(f"{stem}-{i}" for i in range(1000) if layer.consistent_hash(f"{stem}-{i}") == shard)


async def members(layer, group: str, count: int) -> list[str]:
    """`count` new local channels of `layer`, each in `group`."""
    channels = [await layer.new_channel() for _ in range(count)]
    for channel in channels:
        await layer.group_add(group, channel)
    return channels


@pytest.mark.parametrize("mode", MODES)
async def test_groups_on_both_shards_reach_members_of_processes_on_both_shards(
        mode, redis_url, second_redis_url, processes):
    """Rooms on either shard; inboxes on either shard; every member gets every send once."""
    hosts = [{"address": redis_url}, {"address": second_redis_url}]
    first, second = processes(hosts, mode, inbox_on=0), processes(hosts, mode, inbox_on=1)
    sender = processes(hosts, mode)  # an HTTP worker: sends, has no members
    groups = [group_on(sender, 0), group_on(sender, 1)]
    joined = {group: {layer: await members(layer, group, 2) for layer in (first, second)}
              for group in groups}
    for group in groups:
        receives = [asyncio.ensure_future(layer.receive(channel))
                    for layer, channels in joined[group].items() for channel in channels]
        await sender.group_send(group, {"type": "room.notice", "text": group})
        for receive in receives:
            assert (await asyncio.wait_for(receive, 5))["text"] == group
    if mode == "script":
        # Each group's memberships are kept on its own shard and only there.
        for index, url in enumerate([redis_url, second_redis_url]):
            async with aioredis.from_url(url) as client:
                assert await client.exists(group_key(sender, groups[index]))
                assert not await client.exists(group_key(sender, groups[1 - index]))


@pytest.mark.parametrize("shard", [0, 1])
async def test_a_direct_send_reaches_a_process_whatever_shard_its_inbox_is_on(
        shard, redis_url, second_redis_url, processes):
    """The canary's path: a send to one socket's channel goes to its process's inbox."""
    hosts = [{"address": redis_url}, {"address": second_redis_url}]
    process, sender = processes(hosts, "script", inbox_on=shard), processes(hosts, "script")
    channels = [await process.new_channel() for _ in range(8)]
    receives = [asyncio.ensure_future(process.receive(c)) for c in channels]
    for n, channel in enumerate(channels):
        await sender.send(channel, {"type": "canary.ping", "n": n})
    assert [(await asyncio.wait_for(r, 5))["n"] for r in receives] == list(range(8))


@pytest.mark.parametrize("mode", MODES)
async def test_a_failover_of_one_shard_leaves_the_other_shards_rooms_alone(
        mode, sentinel_topology, second_sentinel_topology, processes):
    """Shard A's master is killed while shard B's room carries traffic.

    B's room gets every message, in order, without a stall; once A has a new master its
    memberships are back and A's room is reached again. The process's inbox is on B: with
    script fan-out a process whose inbox is on A waits for A like every room it is in.
    """
    hosts = [sentinel_host(sentinel_topology), sentinel_host(second_sentinel_topology)]
    process = processes(hosts, mode, inbox_on=1)
    sender = processes(hosts, mode)
    room_a, room_b = group_on(sender, 0), group_on(sender, 1)
    channel_a = (await members(process, room_a, 1))[0]
    channel_b = (await members(process, room_b, 1))[0]

    received: list[tuple[int, float]] = []

    async def read_b():
        while True:
            message = await process.receive(channel_b)
            received.append((message["n"], time.monotonic()))

    reader = asyncio.ensure_future(read_b())
    sent: dict[int, float] = {}
    old = sentinel_topology.kill_master()
    failover = asyncio.ensure_future(asyncio.to_thread(sentinel_topology.wait_for_failover, old))
    n = 0
    while not failover.done() or n < 20:
        n += 1
        sent[n] = time.monotonic()
        await sender.group_send(room_b, {"type": "room.event", "n": n})
        await asyncio.sleep(0.05)
    await failover
    await asyncio.sleep(0.3)
    reader.cancel()
    assert [number for number, _ in received] == list(range(1, n + 1))
    slowest = max(at - sent[number] for number, at in received)
    assert slowest < 0.5, f"shard B's room stalled {slowest:.2f}s during shard A's failover"

    # Shard A: its membership (or subscription) is back on the new master.
    receive = asyncio.ensure_future(process.receive(channel_a))
    for attempt in range(100):
        await sender.group_send(room_a, {"type": "room.event", "n": attempt})
        done, _ = await asyncio.wait([receive], timeout=0.2)
        if done:
            break
    assert receive.done()
    for _ in range(150):  # the watcher asks Sentinel every second
        if process.master_addresses.get(0) == sentinel_topology.master_address():
            break
        await asyncio.sleep(0.1)
    assert process.master_addresses[0] == sentinel_topology.master_address()
