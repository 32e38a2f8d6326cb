"""The database outage drills: PostgreSQL stopped, or frozen, for 20 s under chat load.

The whole local topology (nginx, two uvicorn, two gunicorn, Redis Sentinel) runs on a
PostgreSQL of the test's own (deploy/processes/postgres.py, its own data directory and port),
so no other server is touched. Senders, receivers and typists chat in a few rooms; the server
is shut down (fast: every connection cut, as a restart or failover does) and started again,
or frozen (SIGSTOP of every server process: a hung server or a network black hole) and thawed.
Run with -s to see the figures: answers by error code, stored and acknowledged messages,
sockets dropped, what still reached the sockets during the outage, the HTTP API's and
/readyz's answers, and how long chat took to resume.
"""

import asyncio
import dataclasses
import json
import re
import socket
import time
import urllib.request
from collections import Counter

import psycopg
import pytest
import requests
import websockets

from deploy.local.topology import Ports, Topology
from deploy.processes.postgres import PostgresBinaryMissing, PostgresServer, find_bindir
from tests.support.chat_client import ChatClient, login
from tests.support.drills import assert_exactly_once_in_order, settle
from tests.support.topologies import busy_ports, running

pytestmark = [pytest.mark.topology, pytest.mark.timeout(420)]

OFFSET = 13000
POSTGRES_PORT = 5432 + OFFSET
OUTAGE_SECONDS = 20
STEADY_SECONDS = 4  # traffic before the stop, and again after chat has resumed
# After the server is back: Django reconnects on the next use of a broken persistent
# connection (CONN_HEALTH_CHECKS), so the first write after the restart should succeed.
RESUME_BOUND = 10
SEND_INTERVAL = 0.25
ROOMS = ("outage-a", "outage-b", "outage-c")
PER_ROOM = 4  # a sender, a typist and two silent receivers
USERS = [f"pgdrill{n:02d}" for n in range(len(ROOMS) * PER_ROOM)]
# Presence and group memberships expire well within the outage unless the heartbeat keeps
# refreshing them through it: a heartbeat held up by the database would show as lost typing.
DRILL_ENV = {
    "WS_HEARTBEAT_INTERVAL": "2",
    "PRESENCE_TTL": "6",
    "GROUP_EXPIRY": "10",
    "CHAT_MESSAGE_RATE": "100000/10",
    "WS_CONNECT_RATE": "100000/60",
    "WS_FRAME_RATE": "100000/10",
}


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL of this module's own on 127.0.0.1:POSTGRES_PORT."""
    try:
        find_bindir()
    except PostgresBinaryMissing as missing:
        pytest.skip(str(missing))
    if listening(POSTGRES_PORT):
        pytest.fail(f"port {POSTGRES_PORT} (this drill's PostgreSQL) is in use")
    with PostgresServer(port=POSTGRES_PORT) as server:
        yield server


@pytest.fixture(scope="module")
def topology(postgres, tmp_path_factory):
    """The local topology on ports shifted by OFFSET, its database on the drill's server."""
    ports = Ports().shifted(OFFSET)
    if busy_ports(ports):
        pytest.fail(f"ports of the topology shifted by {OFFSET} are in use: {busy_ports(ports)}")
    with pytest.MonkeyPatch.context() as patch:
        # The topology makes its own database on the server DATABASE_URL names, and drops it.
        patch.setenv("DATABASE_URL", postgres.url)
        with running(tmp_path_factory.mktemp("outage") / "run", ports, DRILL_ENV,
                     USERS) as top:
            yield top


SESSIONS: dict[str, str] = {}


class Stamped(list):
    """A client's frame list that notes when each frame arrived (as `_at`)."""

    def append(self, frame):
        """Stamp, then keep the frame."""
        frame["_at"] = time.monotonic()
        super().append(frame)


class Sender:
    """Sends numbered messages steadily until told to stop; remembers when each went out."""

    def __init__(self, chat: ChatClient):
        self.chat = chat
        self.sent: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Send one message per SEND_INTERVAL while connected, until stop is set."""
        n = 0
        while not stop.is_set():
            if self.chat.may_send:
                key = f"{self.chat.username}-{n}"
                n += 1
                try:
                    await self.chat.send({"type": "message", "message": key, "id": key})
                    self.sent[key] = time.monotonic()
                except Exception:
                    pass  # the socket closed under us: counted as a dropped socket
            await asyncio.sleep(SEND_INTERVAL)

    def acked(self) -> dict[str, float]:
        """client_id -> when the sender received its broadcast (live or by gap fill)."""
        return {f["client_id"]: f["_at"] for f in self.chat.events.values()
                if f.get("client_id") in self.sent}

    def errors(self) -> dict[str, dict]:
        """client_id -> the error frame that answered it."""
        return {f["client_id"]: f for f in self.chat.frames
                if f["type"] == "error" and f.get("client_id") in self.sent}


async def typist(chat: ChatClient, stop: asyncio.Event) -> None:
    """Typing and a ping every second: traffic that needs Redis only."""
    n = 0
    while not stop.is_set():
        if chat.may_send:
            n += 1
            try:
                await chat.send({"type": "typing", "is_typing": True})
                await chat.send({"type": "ping", "id": f"p{n}"})
            except Exception:
                pass
        await asyncio.sleep(1)


def get_json(url: str, cookie: str | None = None) -> tuple[int, dict]:
    """GET a URL (status, JSON body or {}); status 0 when nothing answered."""
    try:
        response = requests.get(url, cookies={"sessionid": cookie} if cookie else None,
                                timeout=6)
    except requests.RequestException:
        return 0, {}
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {}


async def probe(top: Topology, cookie: str, room: str, stop: asyncio.Event, api: list,
                ready: list) -> None:
    """Poll the HTTP API through nginx and every process's /readyz until stop is set.

    The API is polled in its own task: a call that waits on a hung database must not hold up
    the readiness polls.
    """

    async def poll_api() -> None:
        while not stop.is_set():
            at = time.monotonic()
            status, body = await asyncio.to_thread(get_json, f"{top.url}/api/rooms/{room}",
                                                   cookie)
            api.append((at, status, body.get("error"), time.monotonic() - at))
            await asyncio.sleep(0.5)

    async def poll_ready(port: int) -> None:
        while not stop.is_set():
            at = time.monotonic()
            status, body = await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/readyz")
            ready.append((at, port, status, body, time.monotonic() - at))
            await asyncio.sleep(0.5)

    await asyncio.gather(poll_api(), *(poll_ready(p) for p in [*top.ports.ws, *top.ports.http]))


async def handshake(top: Topology, cookie: str, room: str) -> str:
    """Open a new chat socket now; describe what it got (the first frame, or the refusal)."""
    try:
        async with websockets.connect(
            f"{top.ws_url}/ws/chat/{room}/",
            additional_headers={"Cookie": f"sessionid={cookie}", "Origin": top.url},
            open_timeout=10,
        ) as connection:
            frame = json.loads(await asyncio.wait_for(connection.recv(), 10))
            return f"accepted, first frame {frame['type']}"
    except websockets.InvalidStatus as refused:
        return f"HTTP {refused.response.status_code}"
    except websockets.ConnectionClosed as closed:
        return f"closed {closed.rcvd.code if closed.rcvd else 1006}"
    except (OSError, TimeoutError) as error:
        return type(error).__name__


def stored(top: Topology, rooms: dict) -> dict[str, dict]:
    """Per room: last_seq, event seqs, message ids of events and rows, payloads by seq."""
    url = top.app_env()["DATABASE_URL"]
    found = {}
    with psycopg.connect(url) as connection:
        for room in (members[0].room for members in rooms.values()):
            row = connection.execute(
                "SELECT id, last_seq FROM chat_chatroom WHERE name = %s", [room]).fetchone()
            room_id, last_seq = row
            events = connection.execute(
                "SELECT seq, kind, message_id, payload FROM chat_roomevent WHERE room_id = %s "
                "ORDER BY seq", [room_id]).fetchall()
            messages = [r[0] for r in connection.execute(
                "SELECT id FROM chat_message WHERE room_id = %s ORDER BY id", [room_id])]
            found[room] = {
                "last_seq": last_seq,
                "seqs": [e[0] for e in events],
                "created": sorted(e[2] for e in events if e[1] == "message"),
                "messages": messages,
                "payloads": {e[0]: e[3] for e in events},
            }
    return found


def metric_sum(port: int, name: str, labels: str = "") -> float:
    """Sum of a metric's samples (whose labels contain `labels`) on one process."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(value) for sample_labels, value in
               re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", body, re.M)
               if labels in sample_labels)


def database_unavailable_counted(top: Topology) -> float:
    """database_unavailable error frames sent so far, over the WebSocket processes."""
    return sum(metric_sum(p, "chanfleet_ws_errors_total", 'reason="database_unavailable"')
               for p in top.ports.ws)


@dataclasses.dataclass
class Drill:
    """What one outage drill saw; figures() prints it."""

    fault: str
    top: Topology
    rooms: dict
    senders: list
    typists: list
    silent: list
    stopped_at: float
    restart_began: float
    back_at: float
    fault_took: float
    restart_took: float
    during: str
    after: str
    resume: list
    api: list
    ready: list
    counted: float  # the WebSocket processes' database_unavailable error frames, this drill

    @property
    def clients(self) -> list:
        """Every chat client of the drill."""
        return [c for members in self.rooms.values() for c in members]

    @property
    def window(self) -> tuple[float, float]:
        """(monotonic start, end) of the outage."""
        return self.stopped_at, self.back_at

    def sent(self) -> dict:
        """client_id -> when it was sent, over all senders."""
        return {k: t for s in self.senders for k, t in s.sent.items()}

    def acked(self) -> dict:
        """client_id -> when its sender received its broadcast."""
        return {k: t for s in self.senders for k, t in s.acked().items()}

    def errors(self) -> dict:
        """client_id -> the error frame that answered it."""
        return {k: f for s in self.senders for k, f in s.errors().items()}

    def during_outage(self, frames, kind: str) -> int:
        """How many frames of a kind arrived while the database was away."""
        return sum(1 for f in frames if f["type"] == kind
                   and self.window[0] + 0.5 < f["_at"] < self.window[1])

    def api_during(self) -> Counter:
        """(status, error code) of the API calls made and answered during the outage."""
        return Counter((s, e) for at, s, e, took in self.api
                       if self.stopped_at + 0.5 < at and at + took < self.restart_began)

    def api_back(self) -> float:
        """Seconds from the end of the outage to the first API call answered 200."""
        return min((at for at, s, _, _ in self.api if at > self.back_at and s == 200),
                   default=float("inf")) - self.back_at

    def ready_during(self) -> list:
        """(port, status, body, seconds taken) of /readyz calls made and answered during it."""
        return [(port, s, b, took) for at, port, s, b, took in self.ready
                if self.stopped_at + 3 < at and at + took < self.restart_began]

    def ready_back(self) -> float:
        """Seconds after the outage until every process's database check passed again."""
        ports = [*self.top.ports.ws, *self.top.ports.http]
        return max(min((at for at, p, s, b, _ in self.ready if at > self.back_at and p == port
                        and b.get("checks", {}).get("database")), default=float("inf"))
                   for port in ports) - self.back_at

    def figures(self, db: dict) -> str:
        """One printable paragraph of what was measured."""
        errors, acked, sent = self.errors(), self.acked(), self.sent()
        stored_ids = {p.get("client_id") for r in db.values() for p in r["payloads"].values()}
        ready = self.ready_during()
        resume = [round(r, 2) if r is not None else None for r in self.resume]
        return (
            f"\ndatabase {self.fault} drill: PostgreSQL {self.fault} took "
            f"{self.fault_took:.2f} s, away {self.back_at - self.stopped_at:.1f} s, back in "
            f"{self.restart_took:.2f} s; {len(sent)} messages sent by {len(self.senders)} "
            f"senders in {len(self.rooms)} rooms, {len(acked)} acknowledged, answered by "
            f"code {dict(Counter(f['code'] for f in errors.values()))} (ws processes counted "
            f"{self.counted:.0f} database_unavailable), unanswered "
            f"{len(set(sent) - set(errors) - set(acked))}, stored though answered with an "
            f"error {len([k for k in errors if k in stored_ids])}, acknowledged but not "
            f"stored {len([k for k in acked if k not in stored_ids])}; sockets dropped "
            f"{sum(len(c.dropped()) for c in self.clients)}, reconnects "
            f"{sum(len(c.connections) - 1 for c in self.clients)}; during the outage typing "
            f"frames per silent receiver "
            f"{[self.during_outage(c.frames, 'typing') for c in self.silent]}, pongs per "
            f"typist {[self.during_outage(t.frames, 'pong') for t in self.typists]}, "
            f"heartbeats per client "
            f"{sorted(self.during_outage(c.frames, 'heartbeat') for c in self.clients)}; a "
            f"new handshake during the outage: {self.during}, after: {self.after}; HTTP API "
            f"during the outage {dict(self.api_during())}, 200 again {self.api_back():.1f} s "
            f"after; /readyz during the outage "
            f"{dict(Counter((port, s) for port, s, _, _ in ready))}, slowest "
            f"{max((t for *_, t in ready), default=0):.1f} s, database check true again "
            f"everywhere {self.ready_back():.1f} s after; first stored message after the "
            f"outage per sender {resume} s")


async def drill(top: Topology, postgres: PostgresServer, fault: str) -> Drill:
    """Chat under load, the database stopped (fast shutdown) or frozen for OUTAGE_SECONDS."""
    for user in USERS:  # logged in once for both drills: PBKDF2 is slow on a busy machine
        if user not in SESSIONS:
            SESSIONS[user] = await asyncio.to_thread(login, top.url, user)
    cookies = SESSIONS
    counted_before = await asyncio.to_thread(database_unavailable_counted, top)
    rooms = {room: [ChatClient(top.url, top.ws_url, u, f"{room}-{fault}", cookie=cookies[u])
                    for u in USERS[i * PER_ROOM:(i + 1) * PER_ROOM]]
             for i, room in enumerate(ROOMS)}
    clients = [c for members in rooms.values() for c in members]
    for c in clients:
        c.frames = Stamped()
    await asyncio.gather(*(c.start() for c in clients))
    senders = [Sender(members[0]) for members in rooms.values()]
    typists = [members[1] for members in rooms.values()]
    silent = [c for members in rooms.values() for c in members[2:]]
    stop_sending, stop_probing = asyncio.Event(), asyncio.Event()
    api: list = []
    ready: list = []
    first_room = clients[0].room
    tasks = [asyncio.create_task(s.run(stop_sending)) for s in senders]
    tasks += [asyncio.create_task(typist(t, stop_sending)) for t in typists]
    prober = asyncio.create_task(probe(top, cookies[USERS[0]], first_room, stop_probing, api,
                                       ready))
    await asyncio.sleep(STEADY_SECONDS)

    stopped_at = time.monotonic()
    if fault == "stop":
        await asyncio.to_thread(postgres.shutdown, "fast")
    else:
        await asyncio.to_thread(postgres.freeze)
    fault_took = time.monotonic() - stopped_at
    await asyncio.sleep(OUTAGE_SECONDS / 2)
    during = await handshake(top, cookies[USERS[-1]], first_room)
    await asyncio.sleep(max(0.0, stopped_at + OUTAGE_SECONDS - time.monotonic()))
    restart_began = time.monotonic()
    if fault == "stop":
        await asyncio.to_thread(postgres.start)
    else:
        await asyncio.to_thread(postgres.thaw)
    back_at = time.monotonic()

    def resumed(sender: Sender) -> float | None:
        acks = [t for key, t in sender.acked().items() if sender.sent[key] >= back_at]
        return min(acks) - back_at if acks else None

    deadline = back_at + RESUME_BOUND + 5
    while time.monotonic() < deadline and any(resumed(s) is None for s in senders):
        await asyncio.sleep(0.1)
    resume = [resumed(s) for s in senders]
    await asyncio.sleep(STEADY_SECONDS)
    stop_sending.set()
    await asyncio.gather(*tasks)
    after = await handshake(top, cookies[USERS[-1]], first_room)
    for members in rooms.values():
        await settle(members, top, members[0].room, 1, timeout=40)
    stop_probing.set()
    await prober
    await asyncio.gather(*(c.stop() for c in clients))
    counted = await asyncio.to_thread(database_unavailable_counted, top) - counted_before
    return Drill(fault, top, rooms, senders, typists, silent, stopped_at, restart_began,
                 back_at, fault_took, back_at - restart_began, during, after, resume, api,
                 ready, counted)


def assert_nothing_half_stored(result: Drill, db: dict) -> None:
    """Every acknowledged message stored; sequences whole; broadcasts are what was stored."""
    stored_ids = {p.get("client_id") for r in db.values() for p in r["payloads"].values()}
    assert [k for k in result.acked() if k not in stored_ids] == []
    for room, state in db.items():
        assert state["seqs"] == list(range(1, state["last_seq"] + 1)), room  # no gap, no extra
        assert state["created"] == state["messages"], room  # every message has its event
    for members in result.rooms.values():
        state = db[members[0].room]
        assert_exactly_once_in_order(members, state["last_seq"])
        for c in members:  # what was broadcast is exactly what was stored
            for seq, frame in c.events.items():
                stored_frame = state["payloads"][seq]
                assert (frame["message_id"], frame.get("client_id")) == (
                    stored_frame["message_id"], stored_frame.get("client_id")), (c.room, seq)


def assert_sockets_stayed_and_redis_traffic_flowed(result: Drill) -> None:
    """No socket dropped or reconnected; typing and pongs reached their sockets throughout."""
    assert sum(len(c.dropped()) for c in result.clients) == 0
    assert sum(len(c.connections) - 1 for c in result.clients) == 0
    typing = [result.during_outage(c.frames, "typing") for c in result.silent]
    pongs = [result.during_outage(t.frames, "pong") for t in result.typists]
    heartbeats = [result.during_outage(c.frames, "heartbeat") for c in result.clients]
    # One per second each, sent all through the outage.
    assert min(typing) >= OUTAGE_SECONDS / 2, typing
    assert min(pongs) >= OUTAGE_SECONDS / 2, pongs
    # Every WS_HEARTBEAT_INTERVAL (2 s here): the heartbeat must not wait for the database.
    assert min(heartbeats) >= OUTAGE_SECONDS / 2 / 2, heartbeats


async def test_a_20_s_database_stop_loses_nothing_drops_no_socket_and_heals_itself(
        topology, postgres):
    """Stop PostgreSQL for 20 s under chat load: retryable answers, nothing half stored."""
    result = await drill(topology, postgres, "stop")
    db = stored(topology, result.rooms)
    print(result.figures(db))
    errors, sent = result.errors(), result.sent()
    codes = Counter(f["code"] for f in errors.values())
    # ------------------------------------------------------------------ senders' answers
    assert "internal" not in codes, codes
    assert set(codes) <= {"database_unavailable"}, codes
    assert all(f.get("retry_after") for f in errors.values())
    assert result.counted == len(errors)  # chanfleet_ws_errors_total counts each answer
    assert all(any(k.startswith(s.chat.username + "-") for k in errors)
               for s in result.senders), "every sender felt the outage"
    window = result.window
    assert all(window[0] - 1 <= sent[k] <= window[1] + RESUME_BOUND for k in errors)
    assert sorted(set(sent) - set(errors) - set(result.acked())) == []  # all answered
    # ------------------------------------------------------------------ stored, delivered
    assert_nothing_half_stored(result, db)
    assert_sockets_stayed_and_redis_traffic_flowed(result)
    # ------------------------------------------------------------------ HTTP and readiness
    api = result.api_during()
    assert api and set(api) == {(503, "database_unavailable")}, api
    assert result.api_back() < RESUME_BOUND
    ready = result.ready_during()
    assert ready and {s for _, s, _, _ in ready} == {200}, ready
    assert {port for port, _, b, _ in ready if b["checks"]["database"] is False} == {
        *topology.ports.ws, *topology.ports.http}
    assert result.ready_back() < RESUME_BOUND
    # ------------------------------------------------------------------ chat resumes by itself
    assert all(r is not None and r < RESUME_BOUND for r in result.resume), result.resume


async def test_a_20_s_database_freeze_delays_writes_but_loses_nothing_and_keeps_sockets(
        topology, postgres):
    """Freeze PostgreSQL (SIGSTOP) for 20 s: writes wait, nothing is lost, Redis traffic flows."""
    result = await drill(topology, postgres, "freeze")
    db = stored(topology, result.rooms)
    print(result.figures(db))
    errors, sent, acked = result.errors(), result.sent(), result.acked()
    codes = Counter(f["code"] for f in errors.values())
    # A hung server answers nothing: writes wait for it rather than fail, then all succeed.
    assert "internal" not in codes, codes
    assert sorted(set(sent) - set(errors) - set(acked)) == []  # all answered in the end
    assert_nothing_half_stored(result, db)
    assert_sockets_stayed_and_redis_traffic_flowed(result)
    # The API waits for the hung server (nginx's proxy_read_timeout is longer than the
    # outage): slow, but never a server error.
    assert not any(s in (500, 502) for s, _ in result.api_during()), result.api_during()
    ready = result.ready_during()
    # The probe's timeout (the chart's timeoutSeconds, 4 s) must not expire on a hung database.
    assert ready and {s for _, s, _, _ in ready} == {200}, ready
    assert max(took for *_, took in ready) < 4, ready
    assert {port for port, _, b, _ in ready if b["checks"]["database"] is False} == {
        *topology.ports.ws, *topology.ports.http}
    assert all(r is not None and r < RESUME_BOUND for r in result.resume), result.resume
