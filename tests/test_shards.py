"""Two Redis shards under one Sentinel set, pub/sub fan-out: one shard's failover, the other's
room untouched (issue 31).

Run with -s for the figures: each room's longest wait between two deliveries at any client,
WebSockets dropped, messages lost.
"""

import asyncio
import signal
import time

import pytest

from app.realtime.layer.shards import Ring
from deploy.local.topology import Ports
from tests.support.drills import Sender, assert_exactly_once_in_order, settle
from tests.support.topologies import busy_ports, running
from tests.test_topology import DRILL_ENV, USERS, client

pytestmark = [pytest.mark.topology, pytest.mark.timeout(300)]

SHARD_NAMES = ["sentinel:chanfleet", "sentinel:chanfleet-2"]  # REDIS_SHARDS of SHARDS=2


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The local topology with two shards and pub/sub fan-out, on shifted ports."""
    ports = next(Ports().shifted(o) for o in (9000, 9500) if not busy_ports(Ports().shifted(o)))
    env = {**DRILL_ENV, "CHANNEL_GROUP_FANOUT": "pubsub"}
    with running(tmp_path_factory.mktemp("shards") / "run", ports, env, USERS[:20],
                 shards=2) as top:
        yield top


def room_on(shard: int, stem: str) -> str:
    """A room whose group (chat.<room>) lives on `shard`."""
    ring = Ring(SHARD_NAMES)
    return next(f"{stem}-{i}" for i in range(1000) if ring.index(f"chat.{stem}-{i}") == shard)


def _stamp(chat) -> None:
    record = chat._record

    def stamped(frame):
        frame["_at"] = time.monotonic()
        record(frame)

    chat._record = stamped


def longest_wait(clients, since: float) -> float:
    """The longest time any client went without a delivery, from `since` to its last one."""
    worst = 0.0
    for c in clients:
        times = sorted(f["_at"] for f in c.events.values() if f["_at"] >= since)
        worst = max([worst, *(b - a for a, b in zip(times, times[1:], strict=False))])
    return worst


async def test_a_failover_of_one_shard_leaves_the_other_shards_room_alone(sharded):
    """kill -9 of the second shard's master while both rooms carry a message every 50 ms."""
    rooms = {"calm": room_on(0, "calm"), "hit": room_on(1, "hit")}
    clients = {name: [client(sharded, u, room) for u in USERS[i * 10:(i + 1) * 10]]
               for i, (name, room) in enumerate(rooms.items())}
    everyone = [c for cs in clients.values() for c in cs]
    await asyncio.gather(*(c.start() for c in everyone))
    for c in everyone:
        _stamp(c)
    senders = {name: Sender(cs[0], 0.05) for name, cs in clients.items()}
    sending = [asyncio.create_task(s.run(120)) for s in senders.values()]
    await asyncio.sleep(2)
    old = sharded.redis_master(1)
    killed_at = time.monotonic()
    sharded.kill(sharded.redis_program(old[1]), signal.SIGKILL)
    await asyncio.gather(*sending)
    last = {name: await settle(clients[name], sharded, room, 120, timeout=40)
            for name, room in rooms.items()}
    await asyncio.gather(*(c.stop() for c in everyone))
    waits = {name: longest_wait(cs, killed_at) for name, cs in clients.items()}
    dropped = sum(len(c.dropped()) for c in everyone)
    print(f"\nshard failover: {old} -> {sharded.redis_master(1)}; longest wait between "
          f"deliveries after the kill: room on the healthy shard {waits['calm']:.2f}s, on the "
          f"failed one {waits['hit']:.2f}s; WebSockets closed {dropped}")
    assert sharded.redis_master(1) != old
    assert dropped == 0
    for name in rooms:
        assert last[name] == 120
        assert_exactly_once_in_order(clients[name], last[name])
    # Sends every 50 ms: the healthy shard's room never waits for the other's failover.
    assert waits["calm"] < 1.0
    sharded.wait_ready(60)
