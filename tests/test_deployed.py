"""The deployed form: the image and the Helm chart running for real in a Kubernetes cluster.

The local single-node cluster (deploy/cluster) runs the image built by `make image`, the test
stand-ins for the chart's public images (deploy/image), a PostgreSQL of the test's own in the
cluster, and the chart installed with Helm (two Redis groups, pub/sub fan-out). The drills,
each printing its figures (`make rehearse-deploy` runs them with -s): a new user's smoke, a
room whose group lives on the second Redis group, a Redis master pod killed under chat load, a
rolling deploy of every WebSocket pod through its real preStop hook, and a forged
X-Forwarded-For from another pod.

Traffic from the host goes to the nginx NodePort on 127.0.0.1 only; pods talk to each other
inside the cluster's own network namespaces.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import requests
import websockets

from app.realtime.layer.shards import Ring
from tests.support import deployment as deployed
from tests.support.chat_client import ChatClient, login
from tests.support.drills import Sender, assert_exactly_once_in_order, settle

pytestmark = [pytest.mark.topology, pytest.mark.cluster, pytest.mark.timeout(1800)]

USERS = [f"drill{n:02d}" for n in range(1, 21)]


@pytest.fixture(scope="module")
def deployment():
    """The chart installed in the local cluster (brought up, and down again, if need be)."""
    with deployed.Deployment.installed(users=USERS) as installed:
        yield installed


def client(top, user, room) -> ChatClient:
    """A resuming chat client of the deployment."""
    return ChatClient(top.url, top.ws_url, user, room)


async def start_all(clients) -> None:
    """Log every client in (one at a time: the login is PBKDF2 on a loaded pod) and connect."""
    for c in clients:
        c.cookie = await asyncio.to_thread(login, c.base_url, c.username)
    await asyncio.gather(*(c.start() for c in clients))


# ---------------------------------------------------------------------------- 1. smoke
async def test_a_new_users_smoke_chat_notifications_live_updates_and_helm_test(deployment):
    """Two users log in through nginx and chat; a notification and a live update arrive."""
    started = time.monotonic()
    alice, bob = client(deployment, "alice", "lobby"), client(deployment, "bob", "lobby")
    await start_all([alice, bob])
    try:
        await alice.send({"type": "message", "message": "hello from the cluster", "id": "s1"})
        last = await settle([alice, bob], deployment, "lobby", 1, timeout=30)
        assert bob.events[last]["message"] == "hello from the cluster"
        chat_seconds = time.monotonic() - started

        bob_session = await asyncio.to_thread(deployed.session_of, deployment.url, "bob")
        me = await asyncio.to_thread(bob_session.get, f"{deployment.url}/api/me", timeout=10)
        bob_id = me.json()["user"]["id"]
        headers = {"Cookie": f"sessionid={bob.cookie}", "Origin": deployment.url}
        async with websockets.connect(f"{deployment.ws_url}/ws/notifications/",
                                      additional_headers=headers) as notifications:
            assert json.loads(await asyncio.wait_for(notifications.recv(), 20))["type"] == \
                "count_update"
            sent = await asyncio.to_thread(
                requests.post, f"{deployment.url}/api/notifications/send",
                json={"user_id": bob_id, "title": "deployed", "message": "from a service"},
                headers={"Authorization": f"Bearer {deployed.SERVICE_TOKEN}"}, timeout=30)
            assert sent.status_code == 201, sent.text
            frame = await next_frame_of(notifications, "notification")
            assert frame["title"] == "deployed"

        headers = {"Cookie": f"sessionid={alice.cookie}", "Origin": deployment.url}
        async with websockets.connect(f"{deployment.ws_url}/ws/live-updates/",
                                      additional_headers=headers) as live:
            await live.send(json.dumps({"type": "subscribe", "topic": "rooms"}))
            await next_frame_of(live, "subscribed")
            token = bob_session.cookies["csrftoken"]
            made = await asyncio.to_thread(
                bob_session.post, f"{deployment.url}/api/rooms", json={"name": "deployed-room"},
                headers={"X-CSRFToken": token}, timeout=30)
            assert made.status_code in (201, 409), made.text
            update = await next_frame_of(live, "update")
            assert update["topic"] == "rooms"
    finally:
        await asyncio.gather(alice.stop(), bob.stop())
    tested = deployment.helm("test", deployment.release, "-n", deployment.namespace,
                             "--logs", "--timeout", "3m0s", timeout=240)
    print(f"\nsmoke: chat delivered across pods in {chat_seconds:.1f}s, notification and live "
          f"update arrived; helm test: {'passed' if tested.returncode == 0 else 'FAILED'}")
    assert tested.returncode == 0, tested.stdout + tested.stderr


async def next_frame_of(socket, kind: str, timeout: float = 20) -> dict:
    """The next frame of one type on a raw socket (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


# ---------------------------------------------------------------------------- 1b. Redis groups
async def test_a_room_of_the_second_redis_group_is_published_on_that_groups_master(deployment):
    """With redis.groups 2 a room whose group hashes to the second master chats through it."""
    ring = Ring(["sentinel:chanfleet", "sentinel:chanfleet-2"])  # REDIS_SHARDS the chart sets
    room = next(f"group2-{i}" for i in range(1000) if ring.index(f"chat.group2-{i}") == 1)
    alice, bob = client(deployment, "alice", room), client(deployment, "bob", room)
    await start_all([alice, bob])
    try:
        await alice.send({"type": "message", "message": "on the second group", "id": "g1"})
        last = await settle([alice, bob], deployment, room, 1, timeout=30)
        assert bob.events[last]["message"] == "on the second group"
        second = deployment.redis_master_pod(master="chanfleet-2")
        first = deployment.redis_master_pod()
        pattern = f"*chat.{room}"
        subscribed = {pod: deployment.redis_cli(pod, "PUBSUB", "CHANNELS", pattern)
                      for pod in (first, second)}
        print(f"\nroom {room}: masters {first} (first group), {second} (second); "
              f"subscriptions {subscribed}")
        assert second.startswith(f"{deployed.RELEASE}-redis-2-"), second
        assert subscribed[second] and not subscribed[first]
    finally:
        await asyncio.gather(alice.stop(), bob.stop())


# ---------------------------------------------------------------------------- 2. forged XFF
def test_a_forged_forwarded_for_from_another_pod_drains_nothing(deployment):
    """Another pod posting to a ws pod's /internal/drain, claiming 127.0.0.1, gets nowhere."""
    pods = deployment.pods("ws")
    targets = [deployment.pod_ip(pod) for pod in pods]
    answers = deployment.run_pod("forger", [
        "python", "-c", deployed.FORGER, str(deployment.app_port), str(deployment.internal_port),
        *targets])
    print(f"\nforged X-Forwarded-For from another pod: {answers}")
    for target in targets:
        assert answers[target]["public"] == 404, answers
        assert answers[target]["internal"] == "refused", answers
    for pod in pods:
        assert deployment.process_status(pod)["draining"] is False


# ---------------------------------------------------------------------------- 3. failover
async def test_the_redis_master_pod_killed_under_chat_load_drops_and_loses_nothing(deployment):
    """kill the master's pod (no grace) mid-chat: 0 WebSockets dropped, 0 messages lost."""
    room = "deployed-failover"
    clients = [client(deployment, u, room) for u in USERS[:10]]
    await start_all(clients)
    try:
        sender = Sender(clients[0], 0.1)
        sending = asyncio.create_task(sender.run(120))
        await asyncio.sleep(3)
        master = await asyncio.to_thread(deployment.redis_master_pod)
        killed_at = time.monotonic()
        await asyncio.to_thread(deployment.kubectl, "delete", "pod", master, "-n",
                                deployment.namespace, "--grace-period=0", "--force",
                                "--wait=false")
        new_master = await asyncio.to_thread(deployment.wait_new_master, master, 60)
        promoted = time.monotonic() - killed_at
        await sending
        last = await settle(clients, deployment, room, 120, timeout=60)
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
    dropped = sum(len(c.dropped()) for c in clients)
    stored = {f.get("client_id") for f in clients[0].events.values()}
    missing = [key for key in sender.sent if key not in stored]
    print(f"\nfailover drill: killed {master}; {new_master} master after {promoted:.1f}s; "
          f"{len(clients)} clients, dropped {dropped}; {last} events, "
          f"{len(missing)} of {len(sender.sent)} sends missing")
    assert missing == []
    assert dropped == 0
    assert_exactly_once_in_order(clients, last)
    await asyncio.to_thread(deployment.wait_redis_ready, 180)


# ---------------------------------------------------------------------------- 4. rollout
async def test_a_rolling_deploy_drains_every_ws_pod_through_its_prestop_hook(deployment):
    """`kubectl rollout restart` of the ws pods: reconnect + 1012, resume, nothing lost."""
    room = "deployed-rollout"
    old_pods = deployment.pods("ws")
    logs = {pod: deployment.follow_logs(pod) for pod in old_pods}
    clients = [client(deployment, u, room) for u in USERS[:12]]
    await start_all(clients)
    drained_metrics: dict[str, float] = {}
    watcher = threading.Thread(target=deployment.watch_drain_metrics,
                               args=(old_pods, drained_metrics, 240), daemon=True)
    try:
        sender = Sender(clients[0], 0.1)
        sending = asyncio.create_task(sender.run(200))
        await asyncio.sleep(2)
        watcher.start()
        restarted_at = time.monotonic()
        await asyncio.to_thread(deployment.kubectl, "rollout", "restart",
                                f"deployment/{deployment.release}-ws", "-n",
                                deployment.namespace)
        await asyncio.to_thread(deployment.kubectl, "rollout", "status",
                                f"deployment/{deployment.release}-ws", "-n",
                                deployment.namespace, "--timeout=300s", timeout=320)
        rolled = time.monotonic() - restarted_at
        await sending
        last = await settle(clients, deployment, room, 200, timeout=60)
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
        watcher.join(30)
    texts = {pod: follower.stop() for pod, follower in logs.items()}
    moved = [c for c in clients if any(conn.asked_to_reconnect for conn in c.connections)]
    codes = sorted({conn.close_code for c in clients for conn in c.connections
                    if conn.asked_to_reconnect})
    delays = sorted(d for c in clients for d in c.reconnect_delays)
    drain_lines = {pod: [line for line in text.splitlines() if "drain: done" in line]
                   for pod, text in texts.items()}
    print(f"\nrollout drill: {len(old_pods)} ws pods replaced in {rolled:.1f}s; "
          f"{len(moved)} of {len(clients)} clients asked to reconnect (close codes {codes}), "
          f"reconnect p50 {delays[len(delays) // 2] if delays else 0:.2f}s "
          f"max {delays[-1] if delays else 0:.2f}s; {last} events, "
          f"dropped {sum(len(c.dropped()) for c in clients)}; drain log lines {drain_lines}; "
          f"chanfleet_drain_reconnects_requested_total while draining {drained_metrics}")
    assert not set(deployment.pods("ws")) & set(old_pods)
    assert len(moved) == len(clients)  # every pod was replaced, so every client moved
    assert codes == [1012]
    assert sum(len(c.dropped()) for c in clients) == 0
    assert_exactly_once_in_order(clients, last)
    assert all(drain_lines.values()), texts
    assert drained_metrics and all(v >= 1 for v in drained_metrics.values()), drained_metrics
