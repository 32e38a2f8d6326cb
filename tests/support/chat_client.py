"""A real WebSocket chat client for topology tests: logs in over HTTP, connects through nginx,
reconnects and resumes as docs/protocol.md tells clients to, and keeps everything it saw."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import requests
import websockets

RETRYABLE = {1001, 1006, 1011, 1012, 4503}


def login(base_url: str, username: str, password: str = "chanfleet") -> str:
    """Log in through the JSON API (with CSRF) and return the session cookie."""
    session = requests.Session()
    token = session.get(f"{base_url}/api/csrf", timeout=10).json()["csrf_token"]
    response = session.post(
        f"{base_url}/api/login", json={"username": username, "password": password},
        headers={"X-CSRFToken": token}, timeout=60,  # PBKDF2 on a loaded 2-core machine
    )
    response.raise_for_status()
    return session.cookies["sessionid"]


@dataclass
class Connection:
    """One connection's life: where it landed, when, and how it ended."""

    node: str = ""
    opened_at: float = 0.0
    closed_at: float | None = None
    close_code: int | None = None
    asked_to_reconnect: bool = False


@dataclass
class ChatClient:
    """A resuming chat client; `events` maps seq -> frame for every stored event it saw."""

    base_url: str
    ws_url: str
    username: str
    room: str = "lobby"
    cookie: str = ""
    events: dict[int, dict] = field(default_factory=dict)
    duplicates: list[int] = field(default_factory=list)
    out_of_order: list[int] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    reconnect_delays: list[float] = field(default_factory=list)
    last_seq: int | None = None
    disconnected_at: float = 0.0
    socket: object = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    task: asyncio.Task | None = None

    async def start(self) -> None:
        """Log in (unless given a session) and keep a connection open until stop()."""
        if not self.cookie:
            self.cookie = await asyncio.to_thread(login, self.base_url, self.username)
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 20)

    async def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        self.stopping = True
        if self.socket is not None:
            await self.socket.close()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=10)

    @property
    def may_send(self) -> bool:
        """True when connected and not asked to leave (send nothing after `reconnect`)."""
        return self.socket is not None and not self.connections[-1].asked_to_reconnect

    @property
    def node(self) -> str:
        """The WebSocket process of the current connection."""
        return self.connections[-1].node if self.connections else ""

    async def send(self, frame: dict) -> None:
        """Send a frame on the current connection."""
        await self.socket.send(json.dumps(frame))

    def dropped(self) -> list[Connection]:
        """Connections that ended without the server asking (anything but a drain's 1012)."""
        return [c for c in self.connections
                if c.closed_at is not None and not c.asked_to_reconnect and not self.stopping]

    async def _run(self) -> None:
        backoff = 0.2
        delay = 0.0
        while not self.stopping:
            if delay:
                await asyncio.sleep(delay)
            query = f"?last_seq={self.last_seq}" if self.last_seq is not None else ""
            try:
                async with websockets.connect(
                    f"{self.ws_url}/ws/chat/{self.room}/{query}",
                    additional_headers={"Cookie": f"sessionid={self.cookie}",
                                        "Origin": self.base_url},
                    open_timeout=10, ping_interval=None, max_size=None,
                ) as socket:
                    self.socket = socket
                    connection = Connection(opened_at=time.monotonic())
                    self.connections.append(connection)
                    if len(self.connections) > 1:
                        self.reconnect_delays.append(time.monotonic() - self.disconnected_at)
                    delay = await self._receive(socket, connection)
                    backoff = 0.2
            except (TimeoutError, OSError, websockets.InvalidStatus, websockets.InvalidHandshake):
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, 3)
                continue
            self.disconnected_at = time.monotonic()
            code = self.connections[-1].close_code
            if code is not None and code not in RETRYABLE and code != 1000:
                return  # 4001, 4003, 4004, 4029...: reconnecting would not help

    async def _receive(self, socket, connection: Connection) -> float:
        """Read frames until the socket closes; return the delay before reconnecting."""
        delay = random.uniform(0.1, 0.5)
        try:
            async for text in socket:
                frame = json.loads(text)
                self.frames.append(frame)
                kind = frame["type"]
                if kind == "connected":
                    connection.node = frame["node"]
                elif kind in ("history_end", "resume_end"):
                    self.last_seq = frame["seq"] if self.last_seq is None else max(
                        self.last_seq, frame["seq"])
                    self.connected.set()
                elif kind == "heartbeat":
                    await socket.send(json.dumps({"type": "pong", "ts": frame["ts"]}))
                elif kind == "reconnect":
                    connection.asked_to_reconnect = True
                    delay = frame["retry_after_ms"] / 1000
                elif kind == "error":
                    pass  # an answer, kept in frames; `broadcast_failed` names a seq it is not
                elif "seq" in frame and not frame.get("history"):
                    self._record(frame)
        except websockets.ConnectionClosed:
            pass
        connection.closed_at = time.monotonic()
        connection.close_code = socket.close_code
        self.connected.clear()
        self.socket = None
        return delay

    def _record(self, frame: dict) -> None:
        seq = frame["seq"]
        if seq in self.events:
            self.duplicates.append(seq)
            return
        if self.events and seq < max(self.events):
            self.out_of_order.append(seq)
        self.events[seq] = frame
        self.last_seq = max(self.last_seq or 0, seq)


async def spread_over(clients: list[ChatClient], nodes: int, tries: int = 24) -> list[ChatClient]:
    """Started `clients`, re-logged in one at a time until they sit on `nodes` processes.

    nginx hashes the session cookie, so a handful of sessions all land on one process now
    and then; a fresh login is a fresh cookie and another throw of the hash. One at a time:
    logins hash passwords, and several at once on a busy machine make the HTTP latency alert
    pending.
    """
    for client in clients:
        await client.start()
    for n in range(tries):
        if len({c.node for c in clients}) >= nodes:
            return clients
        old = clients[n % len(clients)]
        await old.stop()
        fresh = type(old)(old.base_url, old.ws_url, old.username, old.room)
        await fresh.start()
        clients[n % len(clients)] = fresh
    await asyncio.gather(*(c.stop() for c in clients))
    raise AssertionError(f"{len(clients)} sessions did not spread over {nodes} processes "
                         f"in {tries} fresh logins")
