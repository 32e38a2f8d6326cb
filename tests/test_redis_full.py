"""The Redis-full drill: the topology's Redis master reaches maxmemory under a steady chat.

Redis runs with `maxmemory-policy noeviction` (deploy/sentinel/README.md), so at its limit it
refuses every write that may grow memory. The drill fills the master with keys that expire
(as a burst of sessions would, until they expire) and lowers maxmemory below what it then
holds; later it sets a tiny maxmemory and restores it, the operator's mitigation. Each time
Redis stays full longer than GROUP_EXPIRY, so the room's memberships expire meanwhile.
Throughout, two senders (one per WebSocket process) post messages and typing frames in a room
of six clients. It checks docs/protocol.md's "When Redis is full": no socket dropped, no
`internal` error, every message stored and delivered to every member exactly once and in
order (live, then by the heartbeat's gap check); new handshakes refused with 4503 and a
subscription with `unavailable`; the refusals counted and ChanfleetRedisRefusingWrites firing
in the topology's Prometheus; live delivery and presence back by themselves once memory frees.

Run with -s to see the figures: errors by code, messages sent, stored, refused and lost, how
long Redis was full and how soon after memory freed live delivery was back.
"""

import asyncio
import collections
import json
import re
import time
import urllib.request
from dataclasses import dataclass, field

import pytest
import redis
import requests
import websockets

from deploy.local.topology import Ports, Topology
from monitoring.alerts_source import JOBS
from tests.support import prometheus as live
from tests.support.chat_client import ChatClient, login, spread_over
from tests.support.drills import assert_exactly_once_in_order, settle
from tests.support.topologies import busy_ports, running

pytestmark = [pytest.mark.topology, pytest.mark.timeout(300)]

OFFSET = 14000
ROOM = "redis-full"
USERS = [f"full{n}" for n in range(1, 8)]  # six in the room, one joining after the drill
ENV = {
    "WS_HEARTBEAT_INTERVAL": "2",  # the gap check, presence and membership refresh: every 2 s
    "PRESENCE_TTL": "6",
    "GROUP_EXPIRY": "10",  # the first full window outlasts it: memberships expire meanwhile
    "CHAT_MESSAGE_RATE": "100000/10",
    "WS_CONNECT_RATE": "100000/60",
    "WS_FRAME_RATE": "100000/10",
}
# Written into the master, which then gets a maxmemory HEADROOM below what it holds. More than
# the replication backlog (16 MiB, counted as used memory): the backlog is full after the fill
# and does not grow when the filler expires, so only the filler's own bytes come free.
FILLER_BYTES = 24 * 2**20
HEADROOM = 8 * 2**20
FILLER_TTL = 20  # seconds: Redis stays full until these keys expire
SEND_INTERVAL = 0.1
# An echo later than this after its send came by the heartbeat's gap check (every 2 s here),
# not by a live broadcast.
LIVE = 1.0
SHRUNK_SECONDS = 12  # the second full window: longer than GROUP_EXPIRY
SCRAPE_INTERVAL = "1s"


class Stamped(list):
    """A frame list that stamps each frame with its arrival time (`_at`, monotonic)."""

    def append(self, frame):
        """Stamp and keep one frame."""
        frame["_at"] = time.monotonic()
        super().append(frame)


@dataclass
class Client(ChatClient):
    """A chat client that keeps arrival times."""

    frames: list = field(default_factory=Stamped)


@dataclass
class Sender:
    """Posts numbered messages (and now and then a typing frame) until stopped."""

    chat: Client
    sent: dict[str, float] = field(default_factory=dict)
    running: bool = True

    async def run(self) -> None:
        """Send one message per SEND_INTERVAL, a typing frame with every tenth."""
        n = 0
        while self.running:
            key = f"{self.chat.username}-{n}"
            await self.chat.send({"type": "message", "message": key, "id": key})
            self.sent[key] = time.monotonic()
            if n % 10 == 0:
                await self.chat.send({"type": "typing", "is_typing": True, "id": f"typing-{key}"})
            n += 1
            await asyncio.sleep(SEND_INTERVAL)

    def errors(self) -> dict[str, str]:
        """client_id -> the error code the sender got for it."""
        return {f["client_id"]: f["code"] for f in self.chat.frames
                if f["type"] == "error" and "client_id" in f}

    def echoes(self) -> dict[str, float]:
        """message id -> arrival of its stored event at the sender (live or gap-filled)."""
        return {f["client_id"]: f["_at"] for f in self.chat.frames
                if f["type"] == "message" and f.get("client_id") in self.sent}


# ---------------------------------------------------------------------------- helpers
def ws_metrics(top: Topology) -> str:
    """The /metrics text of every WebSocket process."""
    bodies = []
    for port in top.ports.ws:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            bodies.append(response.read().decode())
    return "\n".join(bodies)


def refusals(top: Topology) -> dict[str, float]:
    """chanfleet_redis_oom_refusals_total by operation, summed over the WebSocket processes."""
    totals: dict[str, float] = collections.Counter()
    for operation, value in re.findall(
            r'^chanfleet_redis_oom_refusals_total\{operation="(\w+)"\} (\S+)$', ws_metrics(top),
            re.M):
        totals[operation] += float(value)
    return dict(totals)


def gap_filled(top: Topology) -> float:
    """Stored events the WebSocket processes delivered by gap fill or resume."""
    return sum(float(v) for v in re.findall(
        r"^chanfleet_resume_replayed_messages_total (\S+)$", ws_metrics(top), re.M))


def scrape_faster(top: Topology) -> None:
    """Make the topology's Prometheus scrape and evaluate every SCRAPE_INTERVAL."""
    live.scrape_every(top, SCRAPE_INTERVAL)


def alert_state(top: Topology, name: str) -> str | None:
    """`firing`, `pending` or None: the state of one alert in the topology's Prometheus."""
    states = {s["metric"]["alertstate"]
              for s in live.query(top.prometheus_url, f'ALERTS{{alertname="{name}"}}')}
    return "firing" if "firing" in states else ("pending" if states else None)


class Master:
    """The Redis master of the topology, seen through redis-py."""

    def __init__(self, top: Topology):
        host, port = top.redis_master()
        self.client = redis.Redis(host=host, port=port, password=top.redis.password,
                                  socket_timeout=5)
        self.limit = self.client.config_get("maxmemory")["maxmemory"]

    def memory(self) -> tuple[int, int]:
        """(used memory as maxmemory counts it, maxmemory) in bytes."""
        info = self.client.info("memory")
        return info["used_memory"] - info["mem_not_counted_for_evict"], info["maxmemory"]

    def fill_with_expiring_keys(self) -> None:
        """Write FILLER_BYTES that expire in FILLER_TTL, then set maxmemory HEADROOM under them."""
        chunk = 256 * 1024
        pipe = self.client.pipeline(transaction=False)
        for n in range(FILLER_BYTES // chunk):
            pipe.set(f"drill:filler:{n}", b"x" * chunk, ex=FILLER_TTL)
        pipe.execute()
        used, _ = self.memory()
        self.client.config_set("maxmemory", str(used - HEADROOM))

    def full(self) -> bool:
        """Whether used memory is over maxmemory (with noeviction: writes are refused)."""
        used, limit = self.memory()
        return 0 < limit < used

    def shrink(self) -> None:
        """Set maxmemory far below what Redis holds."""
        self.client.config_set("maxmemory", "1")

    def restore(self) -> None:
        """Give Redis its configured maxmemory back."""
        self.client.config_set("maxmemory", self.limit)


async def until(check, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll check() (blocking, in a thread) until true; return the monotonic time it was."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)
    return time.monotonic()


async def handshake_close_code(top: Topology, cookie: str) -> int | None:
    """Open a chat socket through nginx and return the code it is closed with (None: open)."""
    async with websockets.connect(
        f"{top.ws_url}/ws/chat/{ROOM}/",
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": top.url},
        open_timeout=10,
    ) as connection:
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(connection.recv(), 5))
                if frame["type"] == "history_end":
                    return None
        except websockets.ConnectionClosed:
            return connection.close_code


async def subscribe_answer(top: Topology, cookie: str) -> str:
    """Subscribe to a live-update topic through nginx; `subscribed` or the error's code."""
    async with websockets.connect(
        f"{top.ws_url}/ws/live-updates/",
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": top.url},
        open_timeout=10,
    ) as connection:
        await connection.send(json.dumps({"type": "subscribe", "topic": "rooms", "id": "s"}))
        while True:
            frame = json.loads(await asyncio.wait_for(connection.recv(), 10))
            if frame["type"] == "subscribed":
                return "subscribed"
            if frame["type"] == "error":
                return frame["code"]


def login_status(base_url: str, username: str) -> int:
    """The HTTP status of a login through the JSON API."""
    try:
        login(base_url, username)
    except requests.HTTPError as error:
        return error.response.status_code
    return 200


def live_for_good_after(senders: list[Sender], moment: float, until: float) -> float:
    """Seconds from `moment` to the first message sent after it from which on (up to `until`)
    every echo came live, within LIVE of its send."""
    sends = sorted((t, s.echoes().get(key)) for s in senders for key, t in s.sent.items()
                   if moment <= t < until)
    late = [t for t, at in sends if at is None or at - t >= LIVE]
    after = [t for t, _ in sends if not late or t > max(late)]
    return min(after) - moment if after else float("inf")


# ---------------------------------------------------------------------------- the topology
@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """The local topology with monitoring, on ports shifted by 14000, and the drill's users."""
    ports = Ports().shifted(OFFSET)
    busy = busy_ports(ports)
    if busy:
        pytest.fail(f"ports of the offset {OFFSET} plan are in use: {busy}")
    with running(tmp_path_factory.mktemp("redis-full") / "run", ports, ENV, USERS,
                 monitoring=True) as top:
        scrape_faster(top)
        live.wait_for_targets_up(top.prometheus_url, list(JOBS.values()), timeout=60)
        yield top


# ---------------------------------------------------------------------------- the drill
async def test_redis_full_drill_drops_no_socket_loses_nothing_alerts_and_recovers(topology):
    """Redis at maxmemory twice under a steady chat: documented answers, no loss, an alert."""
    top = topology
    cookies = await asyncio.gather(*(asyncio.to_thread(login, top.url, u) for u in USERS))
    clients = [Client(top.url, top.ws_url, u, ROOM, cookie=c)
               for u, c in zip(USERS[:6], cookies[:6], strict=True)]
    clients = await spread_over(clients, len(top.ports.ws))
    by_node = {c.node: c for c in clients}
    senders = [Sender(c) for c in by_node.values()]
    master = Master(top)
    refused_before = await asyncio.to_thread(refusals, top)
    filled_before = await asyncio.to_thread(gap_filled, top)
    sending = [asyncio.create_task(s.run()) for s in senders]
    try:
        await asyncio.sleep(2)

        # Full until the filler keys expire: the system must come back by itself.
        await asyncio.to_thread(master.fill_with_expiring_keys)
        filled_at = time.monotonic()
        assert await asyncio.to_thread(master.full)
        handshake_code = await handshake_close_code(top, cookies[6])
        subscribe_code = await subscribe_answer(top, cookies[6])
        login_code = await asyncio.to_thread(login_status, top.url, USERS[6])
        fired_at = await until(
            lambda: alert_state(top, "ChanfleetRedisRefusingWrites") == "firing", 30,
            "ChanfleetRedisRefusingWrites fires")
        # Its own scrape of the exporter may come a second or two after the refusals' alert.
        await until(lambda: alert_state(top, "ChanfleetRedisMemoryNearLimit") is not None, 10,
                    "ChanfleetRedisMemoryNearLimit is pending")
        near_limit = await asyncio.to_thread(alert_state, top, "ChanfleetRedisMemoryNearLimit")
        expired_at = await until(lambda: not master.full(), FILLER_TTL + 15,
                                 "the filler keys expire and Redis has memory again")
        await asyncio.sleep(4)

        # Full again, until the operator gives maxmemory back (the runbook's mitigation).
        await asyncio.to_thread(master.shrink)
        shrunk_at = time.monotonic()
        await asyncio.sleep(SHRUNK_SECONDS)
        await asyncio.to_thread(master.restore)
        restored_at = time.monotonic()
        await asyncio.sleep(4)
        stopped_at = time.monotonic()
    finally:
        for sender in senders:
            sender.running = False
        await asyncio.gather(*sending, return_exceptions=True)
        await asyncio.to_thread(master.restore)

    sent = sum(len(s.sent) for s in senders)
    errors = {k: v for s in senders for k, v in s.errors().items()}
    refused = {k for k, code in errors.items() if code == "unavailable" and not
               k.startswith("typing-")}
    last = await settle(clients, top, ROOM, sent - len(refused), timeout=30)
    # Presence entries expired while Redis was full; the heartbeat has put them back.
    late = Client(top.url, top.ws_url, USERS[6], ROOM, cookie=cookies[6])
    await late.start()
    present = {u["user"] for f in late.frames if f["type"] == "user_list" for u in f["users"]}
    await asyncio.gather(*(c.stop() for c in [*clients, late]))
    refused_after = await asyncio.to_thread(refusals, top)
    filled = await asyncio.to_thread(gap_filled, top) - filled_before

    codes = collections.Counter(f["code"] for c in clients for f in c.frames
                                if f["type"] == "error")
    stored = {f["client_id"] for f in clients[0].events.values()}
    acknowledged = {k for s in senders for k in s.echoes()} | {
        k for k, code in errors.items() if code == "broadcast_failed"}
    lost = sorted(acknowledged - stored)
    unanswered = sorted({k for s in senders for k in s.sent} - stored - refused)
    during = sum(1 for s in senders for k, t in s.sent.items()
                 if filled_at <= t < expired_at or shrunk_at <= t < restored_at)
    dropped = sum(len(c.dropped()) for c in clients)
    counted = {op: refused_after.get(op, 0) - refused_before.get(op, 0) for op in refused_after}
    nonzero = {op: int(n) for op, n in sorted(counted.items()) if n}
    back_after_expiry = live_for_good_after(senders, expired_at, shrunk_at)
    back_after_restore = live_for_good_after(senders, restored_at, stopped_at)
    print(f"\nredis-full drill: full {expired_at - filled_at:.1f}s (until the filler keys "
          f"expired) and {restored_at - shrunk_at:.1f}s (until maxmemory was restored); "
          f"sent {sent} messages ({during} while full), stored {last}, refused {len(refused)}, "
          f"stored messages lost {len(lost)}, unanswered {len(unanswered)}; errors by code "
          f"{dict(codes)}; events delivered by gap fill {filled:.0f}; a new handshake while "
          f"full closed with {handshake_code}, a subscription answered {subscribe_code}, a "
          f"login answered {login_code}; sockets "
          f"dropped {dropped}; OOM refusals counted {nonzero}; "
          f"ChanfleetRedisRefusingWrites firing {fired_at - filled_at:.1f}s after Redis "
          f"filled, ChanfleetRedisMemoryNearLimit {near_limit}; live delivery back "
          f"{back_after_expiry:.2f}s after the keys expired and {back_after_restore:.2f}s "
          f"after maxmemory was restored; presence of all {len(present)} users back")

    assert dropped == 0 and all(len(c.connections) == 1 for c in clients)
    assert set(codes) <= {"broadcast_failed", "unavailable"}, codes
    assert handshake_code == 4503 and subscribe_code == "unavailable" and login_code == 200
    assert lost == [] and unanswered == []
    assert not refused & stored
    assert last == len(stored) == sent - len(refused)
    assert during > 0 and filled > 0  # stored while full; delivered once memberships expired
    assert_exactly_once_in_order(clients, last)
    assert counted["memberships"] > 0 and counted["presence"] > 0 and counted["send"] > 0
    assert near_limit in ("pending", "firing")
    assert back_after_expiry < 5 and back_after_restore < 5
    assert present >= set(USERS[:7])
