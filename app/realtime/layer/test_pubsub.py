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


async def test_after_a_failover_the_subscriptions_come_back_on_the_new_master(
        sentinel_topology, processes):
    """A killed master: the subscriber reconnects, subscribes again, and sends arrive."""
    host = sentinel_host(sentinel_topology)
    layer, sender = processes(host), processes(host)
    channel = (await joined(layer, "room", 1))[0]
    receive = asyncio.ensure_future(layer.receive(channel))
    await sender.group_send("room", {"type": "room.notice", "text": "before"})
    assert (await asyncio.wait_for(receive, 5))["text"] == "before"
    old = sentinel_topology.kill_master()
    await asyncio.to_thread(sentinel_topology.wait_for_failover, old)
    receive = asyncio.ensure_future(layer.receive(channel))
    # Published until one arrives: those sent before the subscriber is back reach nobody.
    for attempt in range(100):
        await sender.group_send("room", {"type": "room.notice", "text": f"after {attempt}"})
        done, _ = await asyncio.wait([receive], timeout=0.2)
        if done:
            break
    assert receive.done() and receive.result()["text"].startswith("after")
    new = layer.connection(0)
    assert await subscribers(new, layer.subscriptions().channel_of("room")) == 1
