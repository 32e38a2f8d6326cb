"""Pub/sub group fan-out against real Redis and a real Sentinel failover."""

import asyncio

import pytest

from app.realtime.layer.channel_layer import ResilientRedisChannelLayer
from app.realtime.layer.test_channel_layer import sentinel_host


@pytest.fixture
async def processes():
    """Layers in pub/sub mode, each standing for one WebSocket process; stopped at teardown."""
    made = []

    def make(host):
        layer = ResilientRedisChannelLayer(
            hosts=[host], prefix="t", capacity=100, expiry=30, group_expiry=60,
            retry_seconds=20, group_fanout="pubsub")
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.stop_readers()


async def subscribers(client, channel: str) -> int:
    """How many connections Redis has subscribed to a pub/sub channel."""
    return dict(await client.pubsub_numsub(channel))[channel.encode()]


def collecting(layer, channel: str) -> tuple[list, asyncio.Future]:
    """(the `n` of each message the channel receives, in order; the task reading them)."""
    got = []

    async def read():
        while True:
            got.append((await layer.receive(channel))["n"])

    return got, asyncio.ensure_future(read())


async def joined(layer, group: str, count: int) -> list[str]:
    """`count` new local channels of `layer`, each in `group`."""
    channels = [await layer.new_channel() for _ in range(count)]
    for channel in channels:
        await layer.group_add(group, channel)
    return channels


async def test_a_process_subscribes_once_for_many_members_and_leaves_with_the_last(
        redis_url, processes):
    """Three sockets in a room: one subscription; the last one leaving unsubscribes."""
    layer = processes({"address": redis_url})
    channels = await joined(layer, "room", 3)
    client = layer.connection(0)
    name = layer.subscriptions().channel_of("room")
    assert await subscribers(client, name) == 1
    for channel in channels[:2]:
        await layer.group_discard("room", channel)
    assert await subscribers(client, name) == 1
    await layer.group_discard("room", channels[2])
    assert await subscribers(client, name) == 0
    assert not await client.keys("t*group*")  # nothing kept in Redis per membership


async def test_a_group_send_reaches_every_member_of_every_process(redis_url, processes):
    """One PUBLISH; each process hands it to its own members, once each."""
    first, second = processes({"address": redis_url}), processes({"address": redis_url})
    members = {first: await joined(first, "room", 2), second: await joined(second, "room", 3)}
    outsider = await joined(second, "elsewhere", 1)
    receives = {c: asyncio.ensure_future(layer.receive(c))
                for layer, channels in members.items() for c in channels}
    other = asyncio.ensure_future(second.receive(outsider[0]))
    sender = processes({"address": redis_url})  # an HTTP worker: sends, has no members
    await sender.group_send("room", {"type": "room.notice", "text": "hi"})
    for receive in receives.values():
        assert (await asyncio.wait_for(receive, 5))["text"] == "hi"
    await asyncio.sleep(0.2)
    assert not other.done()
    other.cancel()


async def test_after_a_failover_every_message_arrives_once_in_order(sentinel_topology, processes):
    """A killed master: the subscriber subscribes again on the new one and catches up.

    Sends go on across the failover (each retried until the new master answers); those
    published before the process is subscribed again come from the group's stream.
    """
    host = sentinel_host(sentinel_topology)
    layer, sender = processes(host), processes(host)
    channel = (await joined(layer, "room", 1))[0]
    got, reader = collecting(layer, channel)
    old = sentinel_topology.kill_master()
    failover = asyncio.ensure_future(asyncio.to_thread(sentinel_topology.wait_for_failover, old))
    n = 0
    while not failover.done() or n < 40:
        n += 1
        await sender.group_send("room", {"type": "room.notice", "n": n})
        await asyncio.sleep(0.05)
    await failover
    for _ in range(50):
        if len(got) >= n:
            break
        await asyncio.sleep(0.1)
    reader.cancel()
    assert got == list(range(1, n + 1))
    new = layer.connection(0)
    assert await subscribers(new, layer.subscriptions().channel_of("room")) == 1


async def test_what_is_published_while_a_process_resubscribes_is_caught_up_once(
        redis_url, processes):
    """Subscriber connections cut by Redis: messages that reached no subscriber still arrive."""
    layer, sender = processes({"address": redis_url}), processes({"address": redis_url})
    channel = (await joined(layer, "room", 1))[0]
    got, reader = collecting(layer, channel)
    admin = sender.connection(0)
    unheard = 0
    for n in range(1, 31):
        if n % 3 == 0:
            await admin.client_kill_filter(_type="pubsub")
        receivers = await sender.subscriptions("room").publish("room", {"type": "x", "n": n})
        unheard += receivers == 0
        await asyncio.sleep(0.05 if n % 3 else 0)
    for _ in range(50):
        if len(got) >= 30:
            break
        await asyncio.sleep(0.1)
    reader.cancel()
    assert unheard >= 5  # published while the process had no subscription
    assert got == list(range(1, 31))
