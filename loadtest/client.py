"""The chanfleet protocol client of the load test, and the abstract Locust user that owns it.

In the style of locust's examples/custom_xmlrpc_client: `ChanfleetUser` is abstract and builds
one `ChanfleetClient`; the client speaks docs/protocol.md and fires
`environment.events.request` for every connect, send and receive; the concrete users in
locustfile.py hold only their scenario.

The client logs in over HTTP (a requests session) for the `sessionid` cookie, connects
through nginx with that cookie and an allowed `Origin`, and runs its receive loop in a
greenlet (websocket-client is cooperative under the gevent monkey patching locust applies).
The loop answers heartbeats, and when the socket closes it reconnects with exponential
backoff and jitter (or after a `reconnect` frame's `retry_after_ms`), resuming the room with
`?last_seq=`. Every stored room event and every echo of a sent message goes to the ledger.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import json
import logging
import random
import socket
import struct
import time
from collections import deque
from pathlib import Path
from urllib.parse import quote, urlsplit

import gevent
import gevent.event
import requests
import websocket
from locust import User

from loadtest.ledger import LEDGER, Ledger

logger = logging.getLogger(__name__)

# Close codes after which reconnecting cannot help (docs/protocol.md).
FATAL_CLOSES = {4003: "forbidden", 4004: "not found"}
IDLE_TIMEOUT = 90.0  # > the 25 s heartbeat and the server's 20 s pings: silence means dead
RECENT = 20


class WsFailure(Exception):
    """A failed WebSocket step (handshake, close, error frame) as Locust shows it."""


class NamePool:
    """Load user numbers: each running user holds the lowest free one (load0001 first)."""

    def __init__(self):
        self.free: list[int] = []
        self.next = 1

    def take(self) -> int:
        """The lowest number no running user holds."""
        if self.free:
            return heapq.heappop(self.free)
        self.next += 1
        return self.next - 1

    def give(self, number: int) -> None:
        """Return a number when its user stops."""
        heapq.heappush(self.free, number)


POOL = NamePool()


class SessionCache:
    """Session cookies kept between runs (--session-cache), so repeated runs skip PBKDF2 logins.

    A cached cookie is checked with GET /api/me; a stale one (another database, logged out,
    expired) falls back to a real login.
    """

    def __init__(self):
        self.path: Path | None = None
        self.cookies: dict[str, str] = {}

    def load(self, path: str) -> None:
        """Use the cache file at path (created on save)."""
        self.path = Path(path) if path else None
        self.cookies = {}
        if self.path is not None and self.path.exists():
            try:
                self.cookies = json.loads(self.path.read_text())
            except ValueError:
                self.cookies = {}

    def save(self) -> None:
        """Write the cache file, readable by its owner only."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.cookies))
        self.path.chmod(0o600)


SESSIONS = SessionCache()


def source_address(host: str, number: int, per_address: int) -> str | None:
    """Spread sockets over 127.0.0.1, .2, ... so nginx's per-address limit (100) is not hit."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return None
    if per_address <= 0 or not address.is_loopback:
        return None
    slot = (number - 1) // per_address
    return f"127.0.{slot // 250}.{slot % 250 + 1}"


def content_time(frame: dict) -> float | None:
    """The send time a load message carries in its content ({"t": ..., "n": ..., "u": ...})."""
    text = frame.get("content") or frame.get("message")
    if not isinstance(text, str) or not text.startswith("{"):
        return None
    try:
        value = json.loads(text).get("t")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


class ChanfleetClient:
    """One user's HTTP session and WebSocket (chat room or notifications) with reconnects."""

    def __init__(self, host: str, username: str, password: str, environment,
                 ledger: Ledger = LEDGER, source: str | None = None):
        parts = urlsplit(host.rstrip("/"))
        self.host = f"{parts.scheme}://{parts.netloc}"
        self.ws_base = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}"
        self.username, self.password = username, password
        self.request_event = environment.events.request
        self.ledger = ledger
        self.source = source
        self.http = requests.Session()
        self.http.trust_env = False  # never send load through a proxy
        self.user_id: int | None = None
        self.route = ""
        self.room: str | None = None
        self.member = None
        self.ws: websocket.WebSocket | None = None
        self.connection = 0
        self.live = gevent.event.Event()
        self.stopping = False
        self.fatal: str | None = None
        self.loop: gevent.Greenlet | None = None
        self.down_since: float | None = None
        self.retry_after_ms: int | None = None
        self.reconnect_at = 0.0
        self.leaving = False
        self.listeners: list = []
        self.recent: deque[int] = deque(maxlen=RECENT)
        self.names: dict[str, str] = {}
        self.ids = itertools.count(1)

    # ------------------------------------------------------------------ events
    def fire(self, name: str, started: float, error: Exception | None = None,
             length: int = 0, kind: str = "WS", ms: float | None = None) -> None:
        """Report one request to Locust (started is a perf_counter value)."""
        self.request_event.fire(
            request_type=kind, name=name, response_length=length, exception=error,
            response_time=ms if ms is not None else (time.perf_counter() - started) * 1000,
            response=None, context={"user": self.username},
        )

    # ------------------------------------------------------------------ HTTP
    def login(self, attempts: int = 3) -> None:
        """GET /api/csrf, then POST /api/login: the session cookie for every WebSocket.

        With a session cache, a cached cookie that GET /api/me accepts is used instead.
        """
        key = f"{self.host} {self.username}"
        cached = SESSIONS.cookies.get(key) if SESSIONS.path is not None else None
        if cached:
            started = time.perf_counter()
            self.http.cookies.set("sessionid", cached)
            try:
                response = self.http.get(f"{self.host}/api/me", timeout=10)
                if response.status_code == 200:
                    self.user_id = response.json()["user"]["id"]
                    self.fire("http me (cached session)", started, kind="HTTP",
                              length=len(response.content))
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            self.http.cookies.clear()
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                token = self.http.get(f"{self.host}/api/csrf", timeout=10).json()["csrf_token"]
                response = self.http.post(
                    f"{self.host}/api/login",
                    json={"username": self.username, "password": self.password},
                    headers={"X-CSRFToken": token, "Origin": self.host}, timeout=30,
                )
                response.raise_for_status()
                self.user_id = response.json()["user"]["id"]
                self.fire("http login", started, kind="HTTP", length=len(response.content))
                if SESSIONS.path is not None:
                    SESSIONS.cookies[key] = self.http.cookies.get("sessionid", "")
                return
            except (requests.RequestException, ValueError, KeyError) as error:
                self.fire("http login", started, error, kind="HTTP")
                if attempt == attempts:
                    raise
                gevent.sleep(random.uniform(0.5, 1.5) * attempt)

    def notify(self, token: str, user_id: int, title: str, message: str,
               category: str = "general") -> dict | None:
        """POST /api/notifications/send with the service token; the notification, or None."""
        started = time.perf_counter()
        try:
            response = self.http.post(
                f"{self.host}/api/notifications/send",
                json={"user_id": user_id, "title": title, "message": message,
                      "category": category},
                headers={"Authorization": f"Bearer {token}"}, timeout=15,
            )
            response.raise_for_status()
            notification = response.json()["notification"]
        except (requests.RequestException, ValueError, KeyError) as error:
            self.fire("http notify", started, error, kind="HTTP")
            return None
        self.fire("http notify", started, kind="HTTP", length=len(response.content))
        return notification

    # ------------------------------------------------------------------ WebSocket lifecycle
    def join(self, room: str) -> None:
        """Connect to ws/chat/<room>/ and keep the room (reconnect and resume) until close()."""
        self.route, self.room = "chat", room
        self.member = self.ledger.member(room, self.username)
        self.loop = gevent.spawn(self._run)

    def open_notifications(self) -> None:
        """Connect to ws/notifications/ and keep it until close()."""
        self.route = "notifications"
        self.loop = gevent.spawn(self._run)

    def wait_live(self, timeout: float) -> bool:
        """Wait until the socket is connected and in sync (history or resume done)."""
        return self.live.wait(timeout)

    def close(self, wait: float = 3.0) -> None:
        """Wait briefly for unechoed messages, then close with 1000 and stop reconnecting."""
        deadline = time.monotonic() + wait
        while self._unechoed() and self.live.is_set() and time.monotonic() < deadline:
            gevent.sleep(0.1)
        self.stopping = True
        ws = self.ws
        if ws is not None:
            try:
                ws.send_close(websocket.STATUS_NORMAL)
            except Exception:
                pass
        if self.loop is not None:
            self.loop.join(timeout=max(0.5, deadline - time.monotonic()))
            if not self.loop.dead:
                if ws is not None:
                    ws.abort()
                self.loop.kill(block=True, timeout=1)
        if self.member is not None:
            self.ledger.left(self.member, time.time())
        self.http.close()

    def _unechoed(self) -> bool:
        return any(p.member is self.member for p in list(self.ledger.pending.values()))

    def _path(self) -> str:
        if self.route == "notifications":
            return "/ws/notifications/"
        path = f"/ws/chat/{quote(self.room)}/"
        position = self.ledger.resume_position(self.member)
        return path if position is None else f"{path}?last_seq={position}"

    def _dial(self, path: str) -> websocket.WebSocket:
        parts = urlsplit(self.ws_base)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        source = (self.source, 0) if self.source else None
        sock = socket.create_connection((parts.hostname, port), timeout=10, source_address=source)
        ws = websocket.WebSocket(enable_multithread=True)
        try:
            ws.connect(
                self.ws_base + path, socket=sock, timeout=10, origin=self.host,
                cookie="sessionid=" + self.http.cookies.get("sessionid", ""),
            )
        except BaseException:
            sock.close()
            raise
        ws.settimeout(IDLE_TIMEOUT)
        return ws

    def _run(self) -> None:
        """Connect, read until closed, back off, resume; until close() or a fatal close."""
        attempt = 0
        relogged = False
        while not self.stopping:
            started = time.perf_counter()
            try:
                ws = self._dial(self._path())
            except Exception as error:
                attempt += 1
                cause = getattr(error, "status_code", None) or type(error).__name__
                self.ledger.count("connect_errors")
                self.ledger.count(f"connect_error {cause}")
                self.fire(f"ws connect {self.route}", started, WsFailure(f"handshake: {cause}"))
                self._mark_down()
                gevent.sleep(self._backoff(attempt, status=getattr(error, "status_code", None)))
                continue
            self.fire(f"ws connect {self.route}", started)
            self.connection += 1
            self.ws = ws
            self.retry_after_ms = None
            self.leaving = False
            self.ledger.gauge("open", 1)
            try:
                code, reason = self._read(ws)
            finally:
                self.ledger.gauge("open", -1)
                self.ws = None
                self.live.clear()
                ws.shutdown()
            now = time.time()
            if self.member is not None:
                self.ledger.connection_closed(self.member, self.connection)
            if self.stopping:
                break
            self._mark_down()
            if code == 1012 or self.leaving:
                self.ledger.count("drained")
                if self.retry_after_ms is None:
                    self.ledger.count("violation 1012 without a reconnect frame")
            else:
                self.ledger.count("dropped")
                self.ledger.count(f"dropped {code}")
                self.fire(f"ws dropped {self.route}", time.perf_counter(),
                          WsFailure(f"close {code} {reason}".strip()), ms=0)
            if code in FATAL_CLOSES or (code == 4001 and relogged):
                self.fatal = f"close {code} {reason}"
                logger.error("%s: %s, giving up", self.username, self.fatal)
                break
            if code == 4001:
                relogged = True
                try:
                    self.login()
                except Exception:
                    pass
            if self.retry_after_ms is not None:
                delay = max(0.0, self.reconnect_at - time.monotonic())
                attempt = 0
            else:
                attempt += 1
                delay = self._backoff(attempt, close=code)
            logger.debug("%s: closed %s at %.3f, retry in %.2fs", self.username, code, now, delay)
            gevent.sleep(delay)

    def _mark_down(self) -> None:
        """Start the reconnect clock (not before the first connection: that is no reconnect)."""
        now = time.time()
        if self.down_since is None and self.connection > 0:
            self.down_since = now
        if self.member is not None:
            self.ledger.disconnected(self.member, now)

    @staticmethod
    def _backoff(attempt: int, close: int | None = None, status: int | None = None) -> float:
        """Exponential backoff with full jitter; longer for 4503, 4029, 1008 and HTTP 429."""
        if close == 4503:
            return random.uniform(1, 5)
        if close in (4029, 1008) or status == 429:
            return random.uniform(5, 10)
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _read(self, ws: websocket.WebSocket) -> tuple[int, str]:
        """Handle frames until the socket closes; returns (close code, reason)."""
        while True:
            try:
                opcode, frame = ws.recv_data_frame(False)
            except websocket.WebSocketTimeoutException:
                return 4999, "client idle timeout"
            except (websocket.WebSocketException, OSError) as error:
                return 1006, type(error).__name__
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data or b""
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                return code, data[2:].decode("utf-8", "replace")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            try:
                self._frame(json.loads(frame.data), len(frame.data))
            except Exception:
                self.ledger.count("client_errors")
                logger.exception("%s: could not handle a frame", self.username)

    # ------------------------------------------------------------------ frames
    def _frame(self, frame: dict, length: int) -> None:
        kind = frame.get("type")
        now = time.time()
        if kind == "heartbeat":
            self.send({"type": "pong", "ts": frame.get("ts")}, "ws send pong")
        elif kind == "reconnect":
            # The server closes with 1012 right after this: stop sending into that socket,
            # and reconnect retry_after_ms after this frame.
            self.retry_after_ms = int(frame.get("retry_after_ms") or 0)
            self.reconnect_at = time.monotonic() + self.retry_after_ms / 1000
            self.live.clear()
            gevent.spawn(self._expect_drain_close, self.connection, self.ws)
        elif kind == "error":
            self._error(frame)
        elif kind in ("history_end", "resume_end"):
            self.ledger.synced(self.member, int(frame["seq"]), now)
            self._went_live(now)
        elif kind == "count_update" and not self.live.is_set():
            self._went_live(now)
        elif "seq" in frame and not frame.get("history") and self.member is not None:
            self._room_event(frame, now, length)
        elif kind == "notification":
            self._timed("ws recv notification", frame.get("message"), now, length)
        for listener in self.listeners:
            listener(frame)

    def _expect_drain_close(self, connection: int, ws) -> None:
        """After a `reconnect` frame the server must close with 1012; if not, leave anyway."""
        gevent.sleep(max(0.0, self.reconnect_at - time.monotonic()) + 1.0)
        if self.connection != connection or self.ws is not ws or ws is None or self.stopping:
            return
        self.ledger.count("violation reconnect frame without a 1012 close")
        self.fire(f"ws drain {self.route}", 0,
                  WsFailure("reconnect frame not followed by a 1012 close"), ms=0)
        self.leaving = True
        try:
            ws.send_close(websocket.STATUS_NORMAL)
        except Exception:
            ws.abort()

    def _went_live(self, now: float) -> None:
        if self.down_since is not None:
            ms = (now - self.down_since) * 1000
            self.ledger.reconnected(ms)
            self.ledger.window.add("reconnects")
            self.fire(f"ws reconnect {self.route}", 0, ms=ms)
            self.down_since = None
        self.live.set()

    def _room_event(self, frame: dict, now: float, length: int) -> None:
        seq = int(frame["seq"])
        status = self.ledger.event(self.member, seq, now)
        if status in ("duplicate", "old"):
            how = "replay" if frame.get("replay") else "live"
            self.fire("ws recv duplicate", 0,
                      WsFailure(f"seq {seq} of {self.room} delivered twice ({how})"), ms=0)
            return
        if frame["type"] != "message":
            return
        if isinstance(frame.get("message_id"), int):
            self.recent.append(frame["message_id"])
        client_id = frame.get("client_id")
        if isinstance(client_id, str) and client_id.startswith("lt-"):
            self.ledger.echo(client_id, seq)
            self.names.pop(client_id, None)
        sent = content_time(frame)
        if sent is None:
            return
        ms = max(0.0, (now - sent) * 1000)
        if frame.get("replay"):
            self.fire("ws recv replay", 0, length=length, ms=ms)
        else:
            self.fire("ws recv message", 0, length=length, ms=ms)
            self.ledger.window.add_rtt(ms)
            self.ledger.window.add("received")

    def _timed(self, name: str, text, now: float, length: int) -> None:
        try:
            sent = float(json.loads(text)["t"])
        except (TypeError, ValueError, KeyError):
            return
        self.fire(name, 0, length=length, ms=max(0.0, (now - sent) * 1000))

    def _error(self, frame: dict) -> None:
        code = frame.get("code")
        client_id = frame.get("client_id")
        self.ledger.count(f"error {code}")
        if code == "broadcast_failed":
            # Stored: it still arrives by gap fill or resume, so the send stays pending.
            self.fire("ws error broadcast_failed", 0, WsFailure(frame.get("message", "")), ms=0)
            return
        name = self.names.pop(client_id, None) if isinstance(client_id, str) else None
        if isinstance(client_id, str):
            self.ledger.reject(client_id)
        self.fire(name or f"ws error {code}", 0, WsFailure(f"{code}: {frame.get('message')}"),
                  ms=0)

    # ------------------------------------------------------------------ sending
    def send(self, frame: dict, name: str) -> bool:
        """Send one frame if the socket is live; reports it as `name`."""
        ws = self.ws
        if ws is None or self.stopping:
            return False
        started = time.perf_counter()
        text = json.dumps(frame, separators=(",", ":"))
        try:
            ws.send(text)
        except Exception as error:
            self.fire(name, started, WsFailure(f"send: {type(error).__name__}"))
            return False
        self.fire(name, started, length=len(text))
        return True

    def send_message(self) -> bool:
        """Send a chat message whose content carries its send time; the ledger expects its echo."""
        if not self.live.is_set():
            return False
        number = next(self.ids)
        client_id = f"lt-{self.username}-{number}"
        content = json.dumps({"t": time.time(), "n": number, "u": self.username})
        self.names[client_id] = "ws send message"
        if len(self.names) > 1000:
            self.names.pop(next(iter(self.names)))
        self.ledger.sent_message(client_id, self.member, self.connection, time.time())
        if not self.send({"type": "message", "id": client_id, "message": content},
                         "ws send message"):
            self.ledger.forget(client_id)
            return False
        self.ledger.window.add("sent")
        return True

    def send_reaction(self, message_id: int, emoji: str, action: str) -> bool:
        """React to a message; the broadcast (if the state changed) is a room event."""
        client_id = f"lt-{self.username}-r{next(self.ids)}"
        self.names[client_id] = "ws send reaction"
        return self.send({"type": "reaction", "id": client_id, "message_id": message_id,
                          "emoji": emoji, "action": action}, "ws send reaction")


class ChanfleetUser(User):
    """Abstract user that owns a ChanfleetClient; subclasses only hold the scenario."""

    abstract = True

    def __init__(self, environment):
        super().__init__(environment)
        options = environment.parsed_options
        self.number = POOL.take()
        self.username = f"{getattr(options, 'user_prefix', 'load')}{self.number:04d}"
        host = urlsplit(self.host or "http://127.0.0.1:8000").hostname or "127.0.0.1"
        self.client = ChanfleetClient(
            self.host, self.username, getattr(options, "load_password", "chanfleet"),
            environment,
            source=source_address(host, self.number, getattr(options, "ws_per_address", 50)),
        )
        self._released = False

    def on_stop(self):
        """Close the socket (waiting briefly for echoes) and free the user number."""
        try:
            self.client.close()
        finally:
            if not self._released:
                self._released = True
                POOL.give(self.number)
