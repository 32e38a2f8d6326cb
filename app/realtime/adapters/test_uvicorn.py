"""uvicorn's protocol as chanfleet subclasses it (FanoutWebSocketProtocol), over real sockets."""

import asyncio
import contextlib
import socket

import uvicorn
from websockets.asyncio.client import connect
from websockets.http11 import Request

from app.realtime.adapters.uvicorn import FanoutWebSocketProtocol, Flag
from app.realtime.consumers.delivery import DIRECT_SOCKET, take_direct_socket
from app.realtime.server.limits import SocketLimits


async def echo_app(scope, receive, send):
    """A tiny ASGI app: refuse /refuse before accepting, close /restart with 1012, echo others."""
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "websocket.accept"})
    if scope["path"] == "/restart":
        await send({"type": "websocket.close", "code": 1012})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "echo:" + message["text"]})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.asynccontextmanager
async def serve(app=None, limits: SocketLimits | None = None, **options):
    """Run an ASGI app (echo_app by default) under uvicorn with our protocol on a free port.

    `options` are uvicorn.Config's (ws_max_size, ws_per_message_deflate, ...).
    """
    port = free_port()
    options = {"ws_per_message_deflate": False, **options}
    protocol = FanoutWebSocketProtocol.with_limits(limits or SocketLimits())
    server = uvicorn.Server(uvicorn.Config(
        app or echo_app, host="127.0.0.1", port=port, ws=protocol,
        lifespan="off", log_level="warning", **options))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
        await asyncio.sleep(0.01)
    try:
        yield server, f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def only_connection(server) -> FanoutWebSocketProtocol:
    (protocol,) = server.server_state.connections
    return protocol


async def fanout_app(scope, receive, send):
    """Accept, then idle until the client leaves: the test writes to it through write_text."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_frames_flow_both_ways_and_the_handshake_is_forgotten():
    """After the 101, neither uvicorn nor websockets' parser holds the upgrade request."""
    async with serve() as (server, url):
        async with connect(url + "/room", compression=None) as client:
            await client.send("one")
            assert await client.recv() == "echo:one"
            protocol = only_connection(server)
            assert protocol.request is None and protocol.response is None
            parser_locals = protocol.conn.parser.gi_frame.f_locals.values()
            assert not any(isinstance(value, Request) for value in parser_locals)
            await client.send("two")
            assert await client.recv() == "echo:two"


async def test_flag_waits_until_set_and_passes_while_set():
    """Flag behaves as asyncio.Event does for set/clear/wait."""
    flag = Flag()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    flag.set()
    assert await asyncio.wait_for(waiter, 1) is True
    assert await flag.wait() is True
    flag.clear()
    assert not flag.is_set()


async def test_write_text_frames_a_broadcast_once_for_every_member():
    """One str written to several sockets is framed once; each client reads the same text."""
    async with serve(fanout_app) as (server, url):
        async with connect(url, compression=None) as a, connect(url, compression=None) as b:
            await asyncio.sleep(0.05)
            protocols = list(server.server_state.connections)
            text = "".join(["héllo ", "wörld"])  # built at run time: a fresh str object
            assert all(protocol.write_text(text) for protocol in protocols)
            assert FanoutWebSocketProtocol._last_frame[0] is text
            assert [await a.recv(), await b.recv()] == [text, text]
            assert all(protocol.write_text("next") for protocol in protocols)
            assert [await a.recv(), await b.recv()] == ["next", "next"]


async def test_write_text_leaves_compressed_and_closing_sockets_to_send():
    """With permessage-deflate, or once closing, write_text declines and writes nothing."""
    async with serve(fanout_app, ws_per_message_deflate=True) as (server, url):
        async with connect(url, compression="deflate") as client:
            await asyncio.sleep(0.05)
            assert only_connection(server).write_text("x") is False
        async with connect(url, compression=None) as client:
            await asyncio.sleep(0.05)
            protocol = only_connection(server)
            protocol.close_sent = True
            assert protocol.write_text("x") is False
            protocol.close_sent = False
            protocol.writable.clear()  # paused: the client reads too slowly
            assert protocol.write_text("x") is False
            protocol.writable.set()
            assert protocol.write_text("y") is True
            assert await client.recv() == "y"


async def test_reading_resumes_when_only_channel_messages_are_queued():
    """A client frame pauses reading; queued channel messages do not keep it paused."""
    async with serve(fanout_app) as (server, url):
        async with connect(url, compression=None):
            await asyncio.sleep(0.05)
            protocol = only_connection(server)
            for message in ({"type": "websocket.receive", "text": "a"},
                            {"type": "websocket.receive", "text": "b"},
                            {"type": "room.event", "text": "x"}):
                protocol.queue.put(message)
            protocol.read_paused = True
            protocol.transport.pause_reading()
            assert (await protocol.receive())["text"] == "a"
            assert protocol.read_paused  # "b" still waits: the client's frames stay bounded
            assert (await protocol.receive())["text"] == "b"
            # uvicorn would stay paused until the room event is read too.
            assert not protocol.read_paused and protocol.transport.is_reading()
            assert (await protocol.receive())["type"] == "room.event"


async def test_the_application_finds_the_direct_socket_in_its_scope():
    """The protocol hands itself over as the scope's DirectSocket, once."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        seen.append(take_direct_socket(scope))
        seen.append(DIRECT_SOCKET in scope["extensions"])
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async with serve(app) as (server, url):
        async with connect(url, compression=None) as client:
            await asyncio.sleep(0.05)
            protocol = only_connection(server)
            assert seen == [protocol, False]  # taken out: the scope no longer refers to it
            assert protocol.inbox is protocol.queue
            assert protocol.write_text("direct") is True
            assert await client.recv() == "direct"


class SansIOClient:
    """A WebSocket client over a bare TCP stream that answers pings only when told to."""

    def __init__(self, reader, writer, protocol):
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.pings = 0
        self.close_code = None

    @classmethod
    async def open(cls, url: str) -> "SansIOClient":
        """Connect and complete the opening handshake."""
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        protocol = ClientProtocol(uri)
        protocol.send_request(protocol.connect())
        client = cls(reader, writer, protocol)
        client.flush()
        while protocol.handshake_exc is None and protocol.state.name == "CONNECTING":
            protocol.receive_data(await reader.read(65536))
        assert protocol.state.name == "OPEN"
        protocol.events_received()  # the 101 response (the echo app sends nothing first)
        return client

    def flush(self) -> None:
        """Send what the protocol has queued (pongs included)."""
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def read_for(self, seconds: float, answer_pings: bool,
                       chatter: float | None = None) -> None:
        """Read frames for `seconds`, counting pings; send a text frame every `chatter` s."""
        from websockets.frames import Opcode

        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        next_chat = loop.time()
        while (now := loop.time()) < end and self.close_code is None:
            if chatter is not None and now >= next_chat:
                self.protocol.send_text(b"hi")
                self.flush()
                next_chat = now + chatter
            wait = min(end, next_chat if chatter is not None else end) - now
            try:
                data = await asyncio.wait_for(self.reader.read(65536), max(wait, 0.001))
            except TimeoutError:
                continue
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if event.opcode == Opcode.PING:
                    self.pings += 1
                elif event.opcode == Opcode.CLOSE:
                    self.close_code = self.protocol.close_rcvd.code
            if answer_pings:
                self.flush()
            else:
                self.protocol.data_to_send()  # the queued pongs are dropped
            if not data:
                break

    def close(self) -> None:
        """Drop the TCP connection."""
        self.writer.close()


async def test_a_client_heard_from_is_not_pinged_a_silent_one_is():
    """Keep-alive pings go only to clients that sent nothing since the last one was due."""
    async with serve(ws_ping_interval=0.2, ws_ping_timeout=0.5) as (_server, url):
        chatty, silent = await SansIOClient.open(url), await SansIOClient.open(url)
        try:
            await asyncio.gather(chatty.read_for(1.2, answer_pings=True, chatter=0.05),
                                 silent.read_for(1.2, answer_pings=True))
        finally:
            chatty.close()
            silent.close()
    assert chatty.pings == 0
    # Its pong counts as hearing from it: every other ping is skipped, not all of them.
    assert silent.pings >= 2
    assert silent.close_code is None


async def test_a_client_that_answers_nothing_is_closed_after_the_ping_timeout():
    """Silence and no pong: 1011 within two ping intervals and the timeout."""
    async with serve(ws_ping_interval=0.2, ws_ping_timeout=0.3) as (_server, url):
        client = await SansIOClient.open(url)
        try:
            await client.read_for(2.0, answer_pings=False)
        finally:
            client.close()
    assert client.pings == 1
    assert client.close_code == 1011
