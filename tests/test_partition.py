"""The partition drill: the Redis master's link is cut while WebSocket processes on both sides
keep serving, then healed.

Every Redis node, sentinel and WebSocket process runs in a network namespace of its own
(tests/support/partition.py). `ws-a` shares the first master's namespace: after the cut it
still reaches the old master and nothing else, so it goes on writing there (min-replicas-to-write
is 0) while the sentinels promote the replica for `ws-b1` and `ws-b2`. The drill checks what
deploy/sentinel/README.md decides on: what the isolated master accepted is lost at the heal,
and none of it mattered. No stored message is lost, every client gets every stored event once
and in order, and memberships and presence are right again once the heal is done.

Printed figures (run with -s): writes the isolated master accepted and lost, refused writes by
kind (client errors, Redis error replies), messages stored, delivered and lost, the failover
and heal times, and how long memberships and presence took to be right.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time

import pytest

from deploy.processes import netns
from deploy.processes.redis_nodes import RedisBinaryMissing, find_redis_server
from tests.support.chat_client import ChatClient
from tests.support.drills import Sender
from tests.support.partition import PREFIX, PartitionTopology

pytestmark = [pytest.mark.topology, pytest.mark.timeout(300)]

ROOM = "partition"
GROUP_EXPIRY = 10
PRESENCE_TTL = 6
# Drill-friendly timings, as the other drills use: what they wait for happens within seconds.
DRILL_ENV = {
    "WS_HEARTBEAT_INTERVAL": "2",
    "PRESENCE_TTL": str(PRESENCE_TTL),
    "GROUP_EXPIRY": str(GROUP_EXPIRY),
    "CHAT_MESSAGE_RATE": "100000/10",
    "WS_CONNECT_RATE": "100000/60",
    "WS_FRAME_RATE": "100000/10",
}
# Users by the process they talk to. The first of each sends; the second leaves during the
# partition and the third joins then, so memberships and presence change on both sides.
SIDES = {
    "ws-a": ["pa1", "pa2", "pa3"],
    "ws-b1": ["pb1", "pb2", "pb3"],
    "ws-b2": ["pc1", "pc2"],
}
USERS = [user for users in SIDES.values() for user in users]
SEND_INTERVAL = 0.25
# Write commands the app sends; their calls on the isolated master are the writes it lost
# (one `set` is the drill's own marker).
WRITE_COMMANDS = {"eval", "evalsha", "zadd", "zrem", "zremrangebyscore", "expire", "incr",
                  "set", "del", "bzmpop", "zpopmin", "bzpopmin"}


class StampedChatClient(ChatClient):
    """A ChatClient that notes when each stored event reached it."""

    def _record(self, frame: dict) -> None:
        frame["_at"] = time.monotonic()
        super()._record(frame)

    @property
    def joined_at(self) -> int:
        """The room position of its first join (history_end's seq)."""
        return next(f["seq"] for f in self.frames if f["type"] == "history_end")

    def errors(self) -> list[dict]:
        """Every error frame it was sent."""
        return [f for f in list(self.frames) if f["type"] == "error"]


@pytest.fixture
def partition(tmp_path):
    """The drill's processes in their namespaces; the namespaces are removed whatever happens."""
    reason = netns.unavailable(f"{PREFIX}-probe")
    if reason is not None:
        pytest.skip(f"the partition drill needs network namespaces: {reason}")
    try:
        find_redis_server()
    except RedisBinaryMissing as error:
        pytest.fail(str(error), pytrace=False)
    top = PartitionTopology(tmp_path / "partition", DRILL_ENV, USERS)
    try:
        top.start()
        yield top
    finally:
        top.stop()


async def _start(clients: list[ChatClient]) -> None:
    await asyncio.gather(*(c.start() for c in clients))


async def _stop(clients: list[ChatClient]) -> None:
    await asyncio.gather(*(c.stop() for c in clients))


async def _spawn(coroutine) -> asyncio.Task:
    return asyncio.create_task(coroutine)


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def room_state(top: PartitionTopology) -> tuple[int, int, dict[str, int]]:
    """The room's id, last seq and stored messages (content -> seq), from the database."""
    rows = top.sqlite("SELECT id, last_seq FROM chat_chatroom WHERE name = ?", ROOM)
    if not rows:
        return 0, 0, {}
    room_id, last = rows[0]
    stored = dict(top.sqlite(
        "SELECT m.content, e.seq FROM chat_message m JOIN chat_roomevent e "
        "ON e.message_id = m.id AND e.kind = 'message' WHERE m.room_id = ?", room_id))
    return room_id, last, stored


def missing_events(client: StampedChatClient, last: int) -> list[int]:
    """Stored events after the client's join that it has not received."""
    return sorted(set(range(client.joined_at + 1, last + 1)) - set(client.events))


def redis_truth(top: PartitionTopology, room_id: int) -> dict[str, set[str]]:
    """Live memberships and presence of the room on the current master.

    Live as the app reads them: a membership younger than GROUP_EXPIRY (group sends trim older
    ones), a presence entry whose deadline has not passed.
    """
    master = top.sentinel_views()["sent1"]
    ip, port = master.split(":")

    def read() -> dict[str, set[str]]:
        with top.node_client((ip, int(port))) as client:
            now = float(client.time()[0])
            members = client.zrangebyscore(f"chanfleet:asgi:group:chat.{ROOM}",
                                           now - GROUP_EXPIRY, "+inf")
            present = client.zrangebyscore(f"chanfleet:presence:room:{room_id}", now, "+inf")

            def live_by_user(pattern: str) -> dict[str, set[str]]:
                found = {}
                for key in client.scan_iter(pattern):
                    live = client.zrangebyscore(key, now, "+inf")
                    if live:
                        found[key.rsplit(":", 1)[1]] = set(live)
                return found

            users = live_by_user("chanfleet:presence:user:*")
            in_room = live_by_user(f"chanfleet:presence:room:{room_id}:*")
        # The room's set holds user ids; each user's sockets in the room have a set of their own.
        return {"members": set(members), "present": set(present),
                "in_room": {f"{u}:{c}" for u, chans in in_room.items() for c in chans},
                "users": {f"{u}:{c}" for u, chans in users.items() for c in chans}}

    return top.on("client", read)


def correct(truth: dict[str, set[str]], clients: list[StampedChatClient]) -> bool:
    """Whether Redis holds exactly the connected clients' users in the room, and one live
    presence entry and membership per connected client."""
    wanted = sorted(str(next(f["user_id"] for f in c.frames if f["type"] == "connected"))
                    for c in clients)
    room_channels = [entry.split(":", 1)[1] for entry in truth["in_room"]]
    user_channels = {entry.split(":", 1)[1] for entry in truth["users"]}
    return (sorted(truth["present"]) == sorted(set(wanted))
            and sorted(entry.split(":", 1)[0] for entry in truth["in_room"]) == wanted
            and truth["members"] == set(room_channels) == user_channels
            and len(room_channels) == len(clients))


def command_calls(info: dict) -> dict[str, int]:
    """Calls per command from INFO commandstats."""
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in info.items()
            if isinstance(stats, dict) and "calls" in stats}


def error_counts(info: dict) -> dict[str, int]:
    """Error replies per prefix from INFO errorstats."""
    return {name.removeprefix("errorstat_"): stats["count"] for name, stats in info.items()
            if isinstance(stats, dict) and "count" in stats}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The counters that grew, and by how much."""
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v > before.get(k, 0)}


def test_a_partitioned_master_loses_only_what_the_app_rebuilds(partition):
    """Cut the master's link under traffic on both sides; after the heal nothing stored is lost."""
    top = partition
    minority = netns.NamespaceLoop(top.hosts["redis1"]).start()
    majority = netns.NamespaceLoop(top.hosts["client"]).start()
    loop_of = {"ws-a": minority, "ws-b1": majority, "ws-b2": majority}
    clients: dict[str, StampedChatClient] = {}
    started: dict[object, list[StampedChatClient]] = {minority: [], majority: []}

    def client(app: str, user: str) -> StampedChatClient:
        target = top.apps[app]
        clients[user] = StampedChatClient(target.url, target.ws_url, user, ROOM)
        started[loop_of[app]].append(clients[user])
        return clients[user]

    senders, sender_tasks = {}, {}
    try:
        # ------------------------------------------------------------ steady state
        for app, users in SIDES.items():
            loop_of[app].run(_start([client(app, u) for u in users[:2]]), timeout=90)
        for app, users in SIDES.items():
            senders[app] = Sender(clients[users[0]], SEND_INTERVAL)
            sender_tasks[app] = loop_of[app].run(_spawn(senders[app].run(1_000_000)))
        top.wait_until("messages from every side", lambda: True if len(
            room_state(top)[2]) >= 9 else None, 30)

        # ------------------------------------------------------------ the cut
        def isolated_counters(via: str) -> tuple[dict, dict, int]:
            stats = top.info("redis1", "commandstats", via)
            errors = top.info("redis1", "errorstats", via)
            offset = top.info("redis1", "replication", via)["master_repl_offset"]
            return command_calls(stats), error_counts(errors), offset

        calls_before, errors_before, offset_before = isolated_counters("client")
        replica_errors_before = error_counts(top.info("redis2", "errorstats"))
        cut_at = time.monotonic()
        top.cut_master_link()
        new_master = f"{top.hosts['redis2'].address}:6379"
        top.wait_until("the sentinels to promote redis2", lambda: True if set(
            top.sentinel_views().values()) == {new_master} else None, 30)
        failover_s = time.monotonic() - cut_at
        # Churn on both sides: one client leaves and one joins, on the isolated master for ws-a.
        for app, users in (("ws-a", SIDES["ws-a"]), ("ws-b1", SIDES["ws-b1"])):
            loop_of[app].run(_stop([clients[users[1]]]), timeout=30)
            loop_of[app].run(_start([client(app, users[2])]), timeout=60)

        def marker() -> bool:
            with top.node_client(top.node_address("redis1")) as node:
                return bool(node.set("cfpart:isolated-write", "1"))

        assert top.on("redis1", marker), "the isolated master refused a write"
        time.sleep(max(0.0, cut_at + failover_s + 6 - time.monotonic()))
        calls_isolated, errors_isolated, offset_isolated = isolated_counters("redis1")
        partition_s = time.monotonic() - cut_at

        # ------------------------------------------------------------ the heal
        healed_at = time.monotonic()
        top.heal_master_link()

        def old_master_rejoined() -> bool | None:
            replication = top.info("redis1", "replication")
            views = set(top.sentinel_views().values())
            return True if (replication["role"] == "slave"
                            and replication.get("master_link_status") == "up"
                            and views == {new_master}) else None

        heal_s = top.wait_until("redis1 to rejoin as a replica of redis2", old_master_rejoined, 30)
        time.sleep(3)
        loop_of["ws-a"].run(_cancel([sender_tasks["ws-a"]]))
        majority.run(_cancel([sender_tasks["ws-b1"], sender_tasks["ws-b2"]]))
        stopped_at = time.monotonic()

        # ------------------------------------------------------------ after the heal
        connected = [c for u, c in clients.items() if u not in ("pa2", "pb2")]

        def everyone_has_everything() -> int | None:
            _, last, _ = room_state(top)
            return last if all(not missing_events(c, last) for c in connected) else None

        last = top.poll("every client to hold every stored event", everyone_has_everything, 30)
        # Ephemeral frames (typing) come only live, through each process's channel-layer
        # reader: they cross both ways only if the readers survived the heal.
        typing_s = {}
        for speaker, listener in (("pb1", "pa1"), ("pa1", "pb1")):
            speaker_app = "ws-a" if speaker.startswith("pa") else "ws-b1"
            typed_at = time.monotonic()
            loop_of[speaker_app].run(clients[speaker].send({"type": "typing"}))

            def heard(speaker=speaker, listener=listener) -> bool | None:
                return True if any(f["type"] == "typing" and f["user"] == speaker
                                   for f in list(clients[listener].frames)) else None

            try:
                top.wait_until(f"{listener} to see {speaker} typing", heard, 10)
            except Exception as error:
                raise AssertionError(f"{error}: a channel-layer reader did not survive the "
                                     "heal") from None
            typing_s[f"{speaker}->{listener}"] = round(time.monotonic() - typed_at, 2)
        room_id, last, stored = room_state(top)
        truth: dict = {}

        def memberships_right() -> bool | None:
            truth.update(redis_truth(top, room_id))
            return True if correct(truth, connected) else None

        try:
            top.wait_until("memberships and presence to match the clients",
                           memberships_right, GROUP_EXPIRY + PRESENCE_TTL + 20)
        except Exception as error:
            raise AssertionError(f"{error}\nredis: {truth}\n{top.describe()}") from None
        settled_after_heal = time.monotonic() - healed_at

        def marker_gone() -> bool:
            with top.node_client(top.node_address("redis2")) as node:
                return node.get("cfpart:isolated-write") is None

        lost_marker = top.on("client", marker_gone)
        replica_errors = delta(error_counts(top.info("redis2", "errorstats")),
                               replica_errors_before)
        old_errors = delta(error_counts(top.info("redis1", "errorstats")), {})
        metrics = {name: top.metrics(name) for name in top.apps}
    finally:
        for loop, mine in started.items():
            try:
                loop.run(_stop(mine), timeout=30)
            finally:
                loop.stop()

    # ------------------------------------------------------------ the figures
    sent = {app: dict(s.sent) for app, s in senders.items()}
    errors = collections.Counter(f["code"] for c in clients.values() for f in c.errors())
    closes = collections.Counter(conn.close_code for c in clients.values()
                                 for conn in c.connections if conn.close_code not in (None, 1000))
    refused = {app: {f["client_id"] for f in clients[SIDES[app][0]].errors()
                     if f.get("client_id") in keys and f["code"] != "broadcast_failed"}
               for app, keys in sent.items()}
    unanswered = {app: sorted(set(keys) - set(stored) - refused[app])
                  for app, keys in sent.items()}
    during = {app: sum(1 for k, t in keys.items() if cut_at <= t < healed_at and k in stored)
              for app, keys in sent.items()}
    lost = {c.username: missing_events(c, last) for c in connected}
    # Send to own echo: live, or by gap fill (a heartbeat later) when the layer lost it.
    slowest_echo = {app: round(max((at - s.sent[k] for k, at in s.acked().items()),
                                   default=0.0), 2) for app, s in senders.items()}
    # Until Sentinel converted it, the old master went on taking ws-a's writes after the heal
    # too; its offset when it asked the new master for a partial resync ends that stream.
    rejoined = re.findall(r"partial resynchronization \(request \w+:(\d+)\)",
                          top.redis["redis1"].log_path.read_text())
    bytes_until_rejoined = int(rejoined[-1]) - 1 - offset_before if rejoined else None
    isolated_writes = delta(calls_isolated, calls_before)
    isolated_writes = {k: v for k, v in isolated_writes.items() if k in WRITE_COMMANDS}
    delivered = sum(len(c.events) for c in connected)
    figures = {
        "failover_s (cut -> all sentinels name redis2)": round(failover_s, 2),
        "partition_s": round(partition_s, 2),
        "heal_s (heal -> redis1 a replica, link up)": round(heal_s, 2),
        "memberships_and_presence_right_s_after_heal": round(settled_after_heal, 2),
        "isolated_master_writes_accepted_and_lost": isolated_writes,
        "typing_after_heal_s": typing_s,
        "isolated_master_replication_bytes_lost": offset_isolated - offset_before,
        "old_master_replication_bytes_lost_until_rejoined": bytes_until_rejoined,
        "isolated_marker_lost": lost_marker,
        "redis_error_replies": {"redis1 (whole run)": old_errors, "redis2": replica_errors,
                                "redis1 during the partition": delta(errors_isolated,
                                                                     errors_before)},
        "client_error_frames": dict(errors),
        "client_close_codes": dict(closes),
        "messages_sent": {a: len(k) for a, k in sent.items()},
        "messages_stored": len(stored),
        "stored_during_partition_by_sender_side": during,
        "refused_unstored": {a: len(k) for a, k in refused.items()},
        "unanswered": {a: len(k) for a, k in unanswered.items()},
        "events_delivered_to_connected_clients": delivered,
        "stored_events_lost": sum(len(v) for v in lost.values()),
        "slowest_echo_s": slowest_echo,
        "room_last_seq": last,
        "app_metrics": {app: {k.removeprefix("chanfleet_"): v for k, v in m.items() if k in {
            "chanfleet_group_send_failures_total", "chanfleet_group_send_retries_total",
            "chanfleet_gap_fills_total", "chanfleet_resume_replayed_messages_total",
            "chanfleet_layer_failover_windows_total", "chanfleet_layer_receive_errors_total",
            "chanfleet_redis_master_changes_total",
            "chanfleet_group_memberships_refreshed_total"}} for app, m in metrics.items()},
    }
    print("\npartition drill:\n" + json.dumps(figures, indent=2, sort_keys=False))
    print(f"(the senders stopped {stopped_at - healed_at:.1f}s after the heal)")

    # The drill happened: the isolated master took writes, and they were lost at the heal.
    assert isolated_writes and lost_marker, figures
    # The minority side kept chatting through the partition: its messages were stored.
    assert during["ws-a"] > 0, figures
    # Nothing stored was lost, every client got every stored event once, in order.
    assert all(not v for v in lost.values()), lost
    for c in connected:
        assert c.duplicates == [] and c.out_of_order == [], (c.username, c.duplicates,
                                                              c.out_of_order)
    # No message vanished silently: stored, or refused with an error the sender saw.
    assert all(not v for v in unanswered.values()), unanswered
    assert settled_after_heal < GROUP_EXPIRY + PRESENCE_TTL + 20

