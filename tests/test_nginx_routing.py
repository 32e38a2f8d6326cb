"""Routing behaviour of deploy/nginx/nginx.conf.tmpl, checked through a real nginx.

Stub backends stand in for uvicorn and gunicorn: every WebSocket stub greets each connection
with a JSON text frame naming itself and echoing the request it saw, then echoes messages;
every HTTP stub answers each request with the same kind of JSON. Clients pick their source
address inside 127.0.0.0/8 where the client address matters (affinity without a cookie,
per-address limits), so tests do not share a limit_conn budget.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from deploy.processes.children import free_port
from deploy.processes.nginx import Nginx

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
HEARTBEAT_PATH = "/ws/heartbeat/"  # the WebSocket stub pings every second on this path


class HttpStub:
    """A threaded HTTP/1.1 server answering every request with JSON naming itself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so nginx can reuse connections

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {
                    "backend": stub.name,
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body_len": len(body),
                    "peer_port": self.client_address[1],
                }
                stub.requests.append(seen)
                payload = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()


class WsStub:
    """A WebSocket server that greets with JSON naming itself and echoes every message."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[str] = []  # every HTTP request that reached it, upgrade or not
        self.draining = False  # when set, answer handshakes 503 like a draining process
        # ping_interval=None: connections stay silent unless the path asks for heartbeats.
        self.server: Server = serve(
            self._handle,
            HOST,
            0,
            ping_interval=None,
            process_request=self._record,
            compression=None,
        )
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, connection: ServerConnection, request: Any) -> Any:
        self.requests.append(request.path)
        if self.draining:
            return connection.respond(503, "draining\n")
        return None

    def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        ws.send(json.dumps({"backend": self.name, "path": request.path, "headers": headers}))
        heartbeat = request.path.startswith(HEARTBEAT_PATH)
        while True:
            try:
                message = ws.recv(timeout=1.0 if heartbeat else None)
            except TimeoutError:
                ws.ping()  # like the app's heartbeat, only every second
                continue
            except ConnectionClosed:
                return
            ws.send(json.dumps({"backend": self.name, "echo": message}))

    def stop(self) -> None:
        """Stop accepting and close open connections (new connections are refused)."""
        self.server.shutdown()


# --- client helpers ---------------------------------------------------------------------


def ws_open(
    nginx: Nginx,
    path: str = "/ws/chat/x/",
    *,
    cookie: str | None = None,
    source: str = HOST,
    headers: dict[str, str] | None = None,
) -> tuple[ClientConnection, dict[str, Any]]:
    """Open a WebSocket through nginx and return it with the backend's greeting."""
    extra = dict(headers or {})
    if cookie is not None:
        extra["Cookie"] = f"sessionid={cookie}; csrftoken=abc"
    ws = connect(
        nginx.ws_url + path,
        additional_headers=extra,
        proxy=None,
        open_timeout=5,
        ping_interval=None,
        compression=None,
        source_address=(source, 0),
        legacy=True,
    )
    greeting = json.loads(ws.recv(timeout=5))
    return ws, greeting


def ws_backend(nginx: Nginx, **kwargs: Any) -> str:
    """Open a WebSocket, close it, and return which backend served it."""
    ws, greeting = ws_open(nginx, **kwargs)
    ws.close()
    return greeting["backend"]


def http_request(
    nginx: Nginx,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str = HOST,
    port: int | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send one HTTP request to nginx (public port unless port is given)."""
    host, public_port = nginx.address
    conn = http.client.HTTPConnection(
        host, port or public_port, timeout=5, source_address=(source, 0)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws_stubs() -> Iterator[list[WsStub]]:
    """Two WebSocket backends, ws-a and ws-b, shared by the module."""
    stubs = [WsStub("ws-a"), WsStub("ws-b")]
    yield stubs
    for stub in stubs:
        stub.stop()


@pytest.fixture(scope="module")
def http_stubs() -> Iterator[list[HttpStub]]:
    """Two HTTP backends, http-a and http-b, shared by the module."""
    stubs = [HttpStub("http-a"), HttpStub("http-b")]
    yield stubs
    for stub in stubs:
        stub.stop()


@pytest.fixture(scope="module")
def nginx(ws_stubs: list[WsStub], http_stubs: list[HttpStub]) -> Iterator[Nginx]:
    """nginx with the local defaults (1m bodies, 100 connections per address)."""
    with Nginx.local(
        free_port(), [s.port for s in ws_stubs], [s.port for s in http_stubs], free_port()
    ) as proc:
        yield proc


def _nginx_with(ws_stubs: list[WsStub], http_stubs: list[HttpStub], **overrides: str) -> Nginx:
    return Nginx.local(
        free_port(),
        [s.port for s in ws_stubs],
        [s.port for s in http_stubs],
        free_port(),
        **overrides,
    )


# --- routing ----------------------------------------------------------------------------


def test_websocket_handshake_is_upgraded_to_a_ws_backend(nginx: Nginx) -> None:
    """A handshake to /ws/chat/x/ is upgraded (101) and served by a WebSocket backend."""
    ws, greeting = ws_open(nginx, cookie="upgrade-check")
    try:
        assert ws.response is not None and ws.response.status_code == 101
        assert greeting["backend"] in {"ws-a", "ws-b"}
        assert greeting["path"] == "/ws/chat/x/"
        ws.send("ping?")
        assert json.loads(ws.recv(timeout=5))["echo"] == "ping?"
    finally:
        ws.close()


def test_plain_http_goes_to_an_http_backend(nginx: Nginx) -> None:
    """GET / is proxied to an HTTP backend."""
    status, _, body = http_request(nginx, "GET", "/accounts/login/?next=/")
    assert status == 200
    seen = json.loads(body)
    assert seen["backend"] in {"http-a", "http-b"}
    assert seen["path"] == "/accounts/login/?next=/"


def test_http_to_ws_path_without_upgrade_gets_426_from_nginx(
    nginx: Nginx, ws_stubs: list[WsStub], http_stubs: list[HttpStub]
) -> None:
    """A non-upgrade request under /ws/ gets 426 from nginx and reaches no backend at all."""
    path = "/ws/chat/no-upgrade/"
    status, headers, _ = http_request(nginx, "GET", path)
    assert status == 426
    assert headers["Upgrade"] == "websocket"
    assert all(path not in stub.requests for stub in ws_stubs)
    assert all(r["path"] != path for stub in http_stubs for r in stub.requests)


# --- WebSocket affinity -----------------------------------------------------------------


def test_same_session_cookie_always_lands_on_the_same_ws_backend(nginx: Nginx) -> None:
    """Ten handshakes with one sessionid cookie all land on the same WebSocket backend."""
    for cookie in ("alice-session", "bob-session"):
        backends = {ws_backend(nginx, cookie=cookie) for _ in range(10)}
        assert len(backends) == 1, (cookie, backends)


def test_different_session_cookies_spread_over_both_ws_backends(nginx: Nginx) -> None:
    """Forty different sessionid cookies are spread over both WebSocket backends."""
    counts: dict[str, int] = {}
    for i in range(40):
        backend = ws_backend(nginx, cookie=f"session-{i:02d}-x7q")
        counts[backend] = counts.get(backend, 0) + 1
    assert set(counts) == {"ws-a", "ws-b"}, counts
    assert min(counts.values()) >= 5, counts


def test_without_cookie_the_same_client_address_lands_on_the_same_backend(nginx: Nginx) -> None:
    """Without a session cookie, handshakes from one client address stick to one backend."""
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        backends = {ws_backend(nginx, source=source) for _ in range(5)}
        assert len(backends) == 1, (source, backends)


def test_without_cookie_different_client_addresses_spread(nginx: Nginx) -> None:
    """Without a session cookie, different client addresses are spread over both backends."""
    backends = {ws_backend(nginx, source=f"127.0.1.{i}") for i in range(1, 31)}
    assert backends == {"ws-a", "ws-b"}


def test_handshakes_for_a_stopped_ws_backend_go_to_the_other(
    ws_stubs: list[WsStub], http_stubs: list[HttpStub]
) -> None:
    """Sessions hashed to a WebSocket backend that went away are served by the remaining one."""
    doomed = WsStub("ws-doomed")
    try:
        with _nginx_with([ws_stubs[0], doomed], http_stubs) as proc:
            cookies = [f"failover-{i}" for i in range(16)]
            on_doomed = [c for c in cookies if ws_backend(proc, cookie=c) == "ws-doomed"]
            assert on_doomed, "no cookie hashed to the second backend"
            doomed.stop()
            # Connection refused -> proxy_next_upstream -> next server on the ring.
            assert {ws_backend(proc, cookie=c) for c in on_doomed} == {"ws-a"}
    finally:
        doomed.stop()


def test_handshakes_skip_a_draining_ws_backend_that_answers_503(
    ws_stubs: list[WsStub], http_stubs: list[HttpStub]
) -> None:
    """Handshakes answered 503 by a draining WebSocket backend are retried on the other one."""
    draining = WsStub("ws-draining")
    try:
        with _nginx_with([ws_stubs[0], draining], http_stubs) as proc:
            cookies = [f"drain-{i}" for i in range(16)]
            on_draining = [c for c in cookies if ws_backend(proc, cookie=c) == "ws-draining"]
            assert on_draining, "no cookie hashed to the second backend"
            draining.draining = True
            assert {ws_backend(proc, cookie=c) for c in on_draining} == {"ws-a"}
            assert draining.requests.count("/ws/chat/x/") > len(on_draining)  # it was asked
    finally:
        draining.stop()


# --- forwarded headers ------------------------------------------------------------------


def test_forwarded_headers_reach_the_http_backend(nginx: Nginx) -> None:
    """The HTTP backend sees Host (with port), X-Forwarded-For/-Proto/-Host and X-Real-IP."""
    status, _, body = http_request(
        nginx, "GET", "/", headers={"Host": "chat.example.test:8000"}, source="127.0.0.5"
    )
    assert status == 200
    headers = json.loads(body)["headers"]
    assert headers["host"] == "chat.example.test:8000"
    assert headers["x-forwarded-host"] == "chat.example.test:8000"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.5"
    assert headers["x-real-ip"] == "127.0.0.5"
    assert len(headers["x-request-id"]) == 32
    assert "connection" not in headers or headers["connection"].lower() != "close"


def test_forwarded_headers_reach_the_ws_backend(nginx: Nginx) -> None:
    """The WebSocket backend sees Host, X-Forwarded-* and the upgrade headers."""
    ws, greeting = ws_open(nginx, cookie="hdr", source="127.0.0.6")
    ws.close()
    headers = greeting["headers"]
    host, port = nginx.address
    assert headers["host"] == f"{host}:{port}"
    assert headers["x-forwarded-host"] == f"{host}:{port}"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.6"
    assert headers["x-real-ip"] == "127.0.0.6"
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"


def test_client_cannot_forge_forwarded_proto_or_real_ip(nginx: Nginx) -> None:
    """Client-sent X-Forwarded-Proto, X-Real-IP and X-Forwarded-For are all overwritten."""
    forged = {"X-Forwarded-Proto": "https", "X-Real-IP": "10.9.9.9", "X-Forwarded-For": "10.9.9.9"}
    status, _, body = http_request(nginx, "GET", "/", headers=forged, source="127.0.0.7")
    assert status == 200
    headers = json.loads(body)["headers"]
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-real-ip"] == "127.0.0.7"
    assert headers["x-forwarded-for"] == "127.0.0.7"


def test_http_upstream_connections_are_reused(nginx: Nginx, http_stubs: list[HttpStub]) -> None:
    """Successive requests reuse nginx's keepalive connections to the HTTP backends."""
    host, port = nginx.address
    before = {id(stub): len(stub.requests) for stub in http_stubs}
    conn = http.client.HTTPConnection(host, port, timeout=5)  # one client connection: one worker
    try:
        for _ in range(8):
            conn.request("GET", "/keepalive-check/")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    for stub in http_stubs:
        new = stub.requests[before[id(stub)] :]
        assert len({r["peer_port"] for r in new}) <= 1, (stub.name, new)


# --- internal-only paths and status -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/metrics"),
        ("GET", "/metrics?format=openmetrics"),
        ("GET", "/metrics/"),
        ("POST", "/internal/drain"),
        ("GET", "/internal/drain"),
        ("POST", "/%69nternal/drain"),
        ("POST", "//internal/drain"),
        ("POST", "/ws/../internal/drain"),
    ],
)
def test_internal_paths_are_404_on_the_public_port(
    nginx: Nginx, http_stubs: list[HttpStub], method: str, path: str
) -> None:
    """/metrics and /internal/ answer 404 from nginx and never reach an HTTP backend."""
    before = sum(len(stub.requests) for stub in http_stubs)
    status, _, _ = http_request(nginx, method, path, body=b"" if method == "POST" else None)
    assert status == 404
    assert sum(len(stub.requests) for stub in http_stubs) == before


def test_nginx_status_is_served_on_the_status_port(nginx: Nginx) -> None:
    """stub_status answers on the status listener for a local client."""
    assert nginx.values is not None
    status_port = int(str(nginx.values["STATUS_LISTEN"]).rsplit(":", 1)[1])
    status, _, body = http_request(nginx, "GET", "/nginx_status", port=status_port)
    assert status == 200
    assert body.startswith(b"Active connections:")


def test_nginx_status_refuses_other_client_addresses(nginx: Nginx) -> None:
    """stub_status is denied to any client but 127.0.0.1 (here: 127.0.0.8)."""
    assert nginx.values is not None
    status_port = int(str(nginx.values["STATUS_LISTEN"]).rsplit(":", 1)[1])
    status, _, _ = http_request(nginx, "GET", "/nginx_status", port=status_port, source="127.0.0.8")
    assert status == 403


def test_public_port_does_not_expose_stub_status(nginx: Nginx) -> None:
    """/nginx_status on the public port is just an app path, not nginx's status page."""
    status, _, body = http_request(nginx, "GET", "/nginx_status")
    assert b"Active connections" not in body
    assert status == 200 and json.loads(body)["backend"].startswith("http-")


# --- limits -----------------------------------------------------------------------------


def test_body_over_the_size_limit_gets_413(nginx: Nginx, http_stubs: list[HttpStub]) -> None:
    """A request body over client_max_body_size (1m) is refused with 413 before the app."""
    before = sum(len(stub.requests) for stub in http_stubs)
    status, _, _ = http_request(nginx, "POST", "/upload/", body=b"x" * (1024 * 1024 + 1))
    assert status == 413
    assert sum(len(stub.requests) for stub in http_stubs) == before


def test_body_under_the_size_limit_reaches_the_app(nginx: Nginx) -> None:
    """A request body under the limit (buffered to a temp file by nginx) reaches the app."""
    status, _, body = http_request(nginx, "POST", "/upload/", body=b"x" * (512 * 1024))
    assert status == 200
    assert json.loads(body)["body_len"] == 512 * 1024


def test_websockets_over_the_per_address_limit_get_429(
    ws_stubs: list[WsStub], http_stubs: list[HttpStub]
) -> None:
    """With a limit of 3 per address, the 4th and 5th concurrent WebSockets get 429."""
    with _nginx_with(ws_stubs, http_stubs, CONN_LIMIT_PER_ADDR="3") as proc:
        open_sockets = [ws_open(proc, cookie=f"lim-{i}", source="127.0.0.9")[0] for i in range(3)]
        try:
            for i in range(2):
                with pytest.raises(InvalidStatus) as rejected:
                    ws_open(proc, cookie=f"extra-{i}", source="127.0.0.9")
                assert rejected.value.response.status_code == 429
            # The limit is per address: another client is not affected.
            ws_open(proc, cookie="other", source="127.0.0.10")[0].close()
            # Closing one frees a slot.
            open_sockets.pop().close()
            deadline = time.monotonic() + 3
            while True:
                try:
                    open_sockets.append(ws_open(proc, cookie="again", source="127.0.0.9")[0])
                    break
                except InvalidStatus:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            for ws in open_sockets:
                ws.close()


def test_behind_a_trusted_balancer_each_client_has_its_own_connection_limit(
    ws_stubs: list[WsStub], http_stubs: list[HttpStub]
) -> None:
    """Through one ingress address, the per-address limit counts each real client (realip).

    The chart trusts the private ranges by default (nginx.realIp.trustedCidrs); here the
    balancer is 127.0.0.11. Without realip every client behind it shared one budget.
    """
    balancer, stranger = "127.0.0.11", "127.0.0.12"
    real_ip = (f"set_real_ip_from {balancer}/32;\n    real_ip_header X-Forwarded-For;\n"
               "    real_ip_recursive on;")
    with _nginx_with(ws_stubs, http_stubs, CONN_LIMIT_PER_ADDR="2",
                     REAL_IP_CONFIG=real_ip) as proc:
        sockets = []

        def through(source: str, client: str, cookie: str):
            return ws_open(proc, cookie=cookie, source=source,
                           headers={"X-Forwarded-For": client})[0]

        try:
            for i in range(5):  # five clients behind the balancer, more than the limit of 2
                sockets.append(through(balancer, f"203.0.113.{i}", f"real-{i}"))
            sockets.append(through(balancer, "203.0.113.0", "real-0b"))
            with pytest.raises(InvalidStatus) as rejected:  # the limit still holds per client
                through(balancer, "203.0.113.0", "real-0c")
            assert rejected.value.response.status_code == 429
            # Anyone else's X-Forwarded-For is a claim: it is limited by its own address.
            sockets.append(through(stranger, "198.51.100.1", "claim-1"))
            sockets.append(through(stranger, "198.51.100.2", "claim-2"))
            with pytest.raises(InvalidStatus) as rejected:
                through(stranger, "198.51.100.3", "claim-3")
            assert rejected.value.response.status_code == 429
        finally:
            for ws in sockets:
                ws.close()


# --- timeouts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_timeout_nginx(ws_stubs: list[WsStub], http_stubs: list[HttpStub]) -> Iterator[Nginx]:
    """nginx with a 3 s WebSocket read timeout (production: 75 s vs a 25 s heartbeat)."""
    with _nginx_with(ws_stubs, http_stubs, WS_READ_TIMEOUT="3s") as proc:
        yield proc


def test_idle_websocket_survives_a_pause_shorter_than_the_read_timeout(
    short_timeout_nginx: Nginx,
) -> None:
    """A WebSocket idle for 1.5 s (timeout 3 s) still carries messages afterwards."""
    ws, _ = ws_open(short_timeout_nginx, "/ws/quiet/", cookie="idle-short")
    try:
        time.sleep(1.5)
        ws.send("still there?")
        assert json.loads(ws.recv(timeout=2))["echo"] == "still there?"
    finally:
        ws.close()


def test_app_heartbeat_keeps_a_websocket_open_past_the_read_timeout(
    short_timeout_nginx: Nginx,
) -> None:
    """Backend pings every second keep an otherwise idle WebSocket open for 4.5 s (timeout 3 s)."""
    ws, _ = ws_open(short_timeout_nginx, HEARTBEAT_PATH, cookie="idle-heartbeat")
    try:
        time.sleep(4.5)
        ws.send("after the timeout")
        assert json.loads(ws.recv(timeout=2))["echo"] == "after the timeout"
    finally:
        ws.close()


def test_silent_websocket_is_closed_after_the_read_timeout(short_timeout_nginx: Nginx) -> None:
    """Without any traffic nginx closes the upgraded connection after about 3 s."""
    ws, _ = ws_open(short_timeout_nginx, "/ws/quiet/", cookie="idle-silent")
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=8)
        assert 2.5 <= time.monotonic() - started <= 6
    finally:
        ws.close()
