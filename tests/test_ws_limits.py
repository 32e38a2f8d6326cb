"""Oversized messages and slow clients against a real WebSocket process, directly and via nginx.

`deploy/entrypoint.sh ws` runs under uvicorn and under daphne, on SQLite and a real Redis
(the channel layer), with a real nginx in front (the product path: client -> nginx -> server).
docs/protocol.md: a message over WS_MAX_SIZE gets a 1009 close frame however large it is, not a
reset; a client that stops reading is closed with 4008 after WS_SLOW_CLIENT_SECONDS, the other
sockets of the process going on meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_sync

from deploy.processes.children import Child, free_ports, poll_until
from deploy.processes.nginx import Nginx
from tests.support.chat_client import login

pytestmark = [pytest.mark.topology, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
SLOW_CLIENT_SECONDS = 3
LINGER_SECONDS = 10


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    """The WebSocket process's, nginx's and nginx's status ports."""
    ws, public, status = free_ports(3)
    return {"ws": ws, "nginx": public, "status": status}


def app_env(server: str, ports: dict[str, int], state: Path, redis_url: str) -> dict[str, str]:
    """The environment of a WebSocket process on loopback: SQLite, real Redis, test limits."""
    origins = ",".join(f"http://127.0.0.1:{ports[name]}" for name in ("ws", "nginx"))
    return {
        **{k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "DATABASE_URL", "INTERNAL_PORT", "FORWARDED_", "WS_"))},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DJANGO_SETTINGS_MODULE": "app.settings", "PYTHONUNBUFFERED": "1",
        "WS_SERVER": server, "PORT": str(ports["ws"]), "BIND": "127.0.0.1",
        "SECRET_KEY": "ws-limits-" + "k" * 50, "HTTPS": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost", "CSRF_TRUSTED_ORIGINS": origins,
        "DATABASE_URL": "", "SQLITE_PATH": str(state / "db.sqlite3"), "REDIS_URL": redis_url,
        # The flood below is one user's: neither the message nor the frame rate may stop it.
        "CHAT_MESSAGE_RATE": "1000000/10", "WS_FRAME_RATE": "1000000/10",
        "WS_SLOW_CLIENT_SECONDS": str(SLOW_CLIENT_SECONDS),
        "WS_CLOSE_LINGER_SECONDS": str(LINGER_SECONDS),
    }


@pytest.fixture(scope="module", params=["uvicorn", "daphne"])
def ws_process(request, ports, redis_server, tmp_path_factory) -> Iterator[dict]:
    """A migrated, seeded SQLite database and `entrypoint.sh ws` serving it."""
    server = request.param
    state = tmp_path_factory.mktemp(f"ws-limits-{server}")
    redis_server.client().flushall()
    env = app_env(server, ports, state, redis_server.url)
    for command in (["migrate", "--noinput"], ["seed_demo"]):
        subprocess.run([sys.executable, "manage.py", *command], env=env, cwd=REPO, check=True,
                       capture_output=True, timeout=300)
    child = Child(f"ws-{server}", [str(REPO / "deploy" / "entrypoint.sh"), "ws"],
                  state / "ws.log", cwd=REPO, env=env).start()
    base = f"http://127.0.0.1:{ports['ws']}"

    def healthy() -> bool | None:
        assert child.exit_code() is None, child.log_tail()
        with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:
            return True if answer.status == 200 else None

    try:
        poll_until(f"{server} to answer /healthz", healthy, 60, child.log_tail)
        cookies = {name: login(base, name) for name in ("alice", "bob", "admin")}
        yield {"server": server, "base": base, "cookies": cookies, "child": child}
    finally:
        child.stop(grace=15)


@pytest.fixture(scope="module")
def nginx(ws_process, ports) -> Iterator[Nginx]:
    """nginx rendered from the chart's template, in front of the WebSocket process."""
    with Nginx.local(ports["nginx"], ws_ports=[ports["ws"]], http_ports=[ports["ws"]],
                     status_port=ports["status"]) as proxy:
        yield proxy


@pytest.fixture(params=["direct", "nginx"])
def endpoint(request, ws_process, nginx, ports) -> dict:
    """Where clients connect: the WebSocket process itself, or nginx in front of it."""
    port = ports["ws"] if request.param == "direct" else ports["nginx"]
    return {**ws_process, "port": port, "origin": f"http://127.0.0.1:{port}",
            "url": f"ws://127.0.0.1:{port}/ws/chat/lobby/"}


async def open_chat(endpoint: dict, user: str, **options):
    """A socket in the lobby as `user`, past its join frames."""
    client = await websockets.connect(
        endpoint["url"], compression=None,
        additional_headers={"Cookie": f"sessionid={endpoint['cookies'][user]}",
                            "Origin": endpoint["origin"]},
        open_timeout=30, close_timeout=LINGER_SECONDS + 5, **options)
    while True:
        frame = await asyncio.wait_for(client.recv(), 30)
        if '"history_end"' in frame:
            return client


def slow_reader_socket(port: int) -> socket.socket:
    """A connected socket with a small receive window: unread bytes wait in the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def chat_metric(base: str, name: str, *labels: str) -> float:
    """The sum of a metric's chat-route series with these labels, from the process's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") and 'route="chat"' in line
                and all(label in line for label in labels)):
            total += float(line.rsplit(" ", 1)[1])
    return total


def slow_client_closes(base: str) -> float:
    """chanfleet_ws_disconnects_total{route="chat", code="4008"} of the WebSocket process."""
    return chat_metric(base, "chanfleet_ws_disconnects_total", 'code="4008"')


def send_oversized(endpoint: dict, message: str) -> tuple:
    """Join the lobby with websockets' blocking client and send `message`: (rcvd, sent) closes.

    The blocking client writes every byte before it reads again: the reset that used to come
    while it was still sending failed its send, the close frame unread.
    """
    with connect_sync(endpoint["url"], max_size=None, compression=None, open_timeout=30,
                      close_timeout=LINGER_SECONDS + 5,
                      additional_headers={"Cookie": f"sessionid={endpoint['cookies']['alice']}",
                                          "Origin": endpoint["origin"]}) as client:
        while '"history_end"' not in client.recv(timeout=30):
            pass
        try:
            client.send(message)
            while True:
                client.recv(timeout=30)
        except ConnectionClosed as closed:
            return closed.rcvd, closed.sent


@pytest.mark.parametrize("size", [2 * MiB, 8 * MiB, 64 * MiB], ids=["2MiB", "8MiB", "64MiB"])
def test_a_message_over_ws_max_size_gets_a_1009_close_frame_not_a_reset(endpoint, size):
    """Three times each: the client, still sending, reads 1009 (WS_MAX_SIZE is 1 MiB)."""
    message = "x" * size
    for attempt in range(3):
        received, sent = send_oversized(endpoint, message)
        assert received is not None, f"attempt {attempt}: reset without a close frame"
        assert received.code == 1009, f"attempt {attempt}: {received}"
        assert sent is not None and sent.code == 1009  # the client answered the close
    # Each refused socket's consumer ran its disconnect: none is left open (or crashed).
    poll_until("every chat socket to be closed",
               lambda: True if chat_metric(endpoint["base"], "chanfleet_ws_connections") == 0
               else None, 15)


async def test_a_client_that_stops_reading_is_closed_with_4008_and_holds_nobody_up(endpoint):
    """Over the send buffer for WS_SLOW_CLIENT_SECONDS: 4008; the room goes on meanwhile."""
    base = endpoint["base"]
    closes_before = await asyncio.to_thread(slow_client_closes, base)
    slow = await open_chat(endpoint, "alice", max_queue=1,
                           sock=slow_reader_socket(endpoint["port"]))
    observer = await open_chat(endpoint, "admin")
    sender = await open_chat(endpoint, "bob")
    arrivals: list[float] = []

    async def read(client, times: list[float] | None) -> None:
        try:
            while True:
                frame = await client.recv()
                if times is not None and '"type":"message"' in frame:
                    times.append(time.monotonic())
        except ConnectionClosed:
            pass

    readers = [asyncio.create_task(read(observer, arrivals)),
               asyncio.create_task(read(sender, None))]
    text = "m" * 3900
    started = time.monotonic()
    closed_at = None

    async def flood() -> None:
        sent = 0
        while True:
            await sender.send(f'{{"type":"message","message":"{text}","id":{sent}}}')
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0.01)

    flooding = asyncio.create_task(flood())
    try:
        while closed_at is None:
            await asyncio.sleep(0.1)
            assert time.monotonic() - started < 60, "the slow client was never closed"
            assert not flooding.done(), flooding
            if await asyncio.to_thread(slow_client_closes, base) > closes_before:
                closed_at = time.monotonic()
    finally:
        flooding.cancel()
    elapsed = closed_at - started
    assert elapsed >= SLOW_CLIENT_SECONDS

    # The slow client reads again: the messages written before the close, then 4008.
    messages = 0
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(LINGER_SECONDS):
            while True:
                if '"type":"message"' in await slow.recv():
                    messages += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008, closed.value
    assert messages > 0

    # Everything between the server and the client (kernel buffers, nginx's) filled up before
    # the server's own buffer did: that was when the last message it read was written, which
    # the observer, in the same room, received at the same moment. The rule's seconds ran
    # from then on.
    full_at = arrivals[min(messages, len(arrivals)) - 1]
    after_full = closed_at - full_at
    assert after_full < SLOW_CLIENT_SECONDS + 2, (after_full, elapsed, messages)

    # Meanwhile the observer in the same room got messages throughout, as fast while the slow
    # client's frames waited in the server as before: nothing waits for the slow socket.
    during = [t for t in arrivals if started <= t <= closed_at]
    gaps = [later - earlier for earlier, later in zip(during, during[1:], strict=False)]
    assert len(during) > 10 and max(gaps) < SLOW_CLIENT_SECONDS - 0.5, (len(during), max(gaps))
    if after_full > 1:  # daphne writes on into Twisted's buffer: no such window to compare
        filling = sum(started <= t < full_at for t in arrivals) / (full_at - started)
        waiting = sum(full_at <= t <= closed_at for t in arrivals) / after_full
        assert waiting > filling / 4, (waiting, filling)
    for client in (observer, sender):
        await client.close()
    await asyncio.gather(*readers)
    print(f"\n{endpoint['server']} via {endpoint['port']}: closed {elapsed:.1f} s after the "
          f"flood began, {after_full:.1f} s after the path filled ({messages} messages read "
          f"after the close), longest observer gap {max(gaps):.2f} s")

