"""uvicorn's protocol as chanfleet subclasses it (FanoutWebSocketProtocol), over real sockets."""

import asyncio
import contextlib
import logging
import socket

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
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
    options = {"ws_per_message_deflate": False, "log_level": "warning", **options}
    protocol = FanoutWebSocketProtocol.with_limits(limits or SocketLimits())
    server = uvicorn.Server(uvicorn.Config(
        app or echo_app, host="127.0.0.1", port=port, ws=protocol,
        lifespan="off", **options))
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


def held_app(writes: list, refuse: bool = False):
    """Accept (or refuse) and send frames both ways inside `writes_held`, recording the writes
    that reach the real transport in `writes`."""

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        socket = take_direct_socket(scope)
        real = socket.transport
        write = real.write
        real.write = lambda data: (writes.append(bytes(data)), write(data))
        await receive()
        with socket.writes_held():
            if refuse:
                await send({"type": "websocket.close", "code": 1000})
                return
            await send({"type": "websocket.accept"})
            assert socket.write_text("one") is True
            await send({"type": "websocket.send", "text": "two"})
            assert socket.write_text("three") is True
            with socket.writes_held():  # nested: still held until the outer block ends
                assert socket.write_text("four") is True
            assert writes == []
        assert socket.transport is real
        socket.write_text("after")
        while (await receive())["type"] != "websocket.disconnect":
            pass

    return app


async def test_writes_held_go_out_as_one_write_in_order():
    """The 101 and the frames written in the block, by write_text or send, are one write."""
    writes: list[bytes] = []
    async with serve(held_app(writes)) as (_, url):
        async with connect(url, compression=None) as client:
            assert [await client.recv() for _ in range(5)] == [
                "one", "two", "three", "four", "after"]
    assert writes[0].startswith(b"HTTP/1.1 101")
    assert writes[0].endswith(b"four")
    assert writes[1].endswith(b"after")


async def test_a_refusal_in_a_held_block_still_reaches_the_client():
    """A close before the accept (HTTP 403) is written and the connection closed."""
    writes: list[bytes] = []
    async with serve(held_app(writes, refuse=True)) as (_, url):
        try:
            async with connect(url, compression=None):
                raise AssertionError("the handshake should have been refused")
        except InvalidStatus as refused:
            assert refused.response.status_code == 403
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 403")


async def failing_app(scope, receive, send):
    """Accepts, then fails: uvicorn logs the exception."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    raise RuntimeError("the application failed")


async def test_an_accepted_socket_logs_nothing_and_an_application_error_still_does():
    """With uvicorn logging at INFO, the per-socket lines (uvicorn's and websockets') are not
    written; an exception in the application is, as uvicorn logs it."""
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        async with serve(log_level="info", log_config=None) as (_, url):
            async with connect(url + "/echo") as ws:
                await ws.send("x")
                assert await ws.recv() == "echo:x"
            async with serve(failing_app, log_level="info", log_config=None) as (_, failing):
                async with connect(failing + "/fail") as ws:
                    with contextlib.suppress(Exception):
                        await ws.recv()
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert [r for r in lines if "Uvicorn running" in r.getMessage()]  # INFO is on
    assert not [r for r in lines if "[accepted]" in r.getMessage()
                or r.getMessage() in ("connection open", "connection closed")]
    assert [r for r in lines if "Exception in ASGI application" in r.getMessage()]


async def test_a_draining_process_refuses_upgrades_with_403_before_the_application():
    """nginx then tries the next process; nothing reaches the application, a refusal is counted."""
    from app.realtime.consumers.registry import registry
    from app.realtime.ops import metrics

    called = []

    async def app(scope, receive, send):
        called.append(scope["type"])
        await echo_app(scope, receive, send)

    refused = metrics.WS_REFUSED.labels("any", "draining")
    before = refused._value.get()
    async with serve(app) as (server, url):
        registry.draining = True
        try:
            for _ in range(2):
                with pytest.raises(InvalidStatus) as answer:
                    async with connect(url + "/room"):
                        pass
                assert answer.value.response.status_code == 403
                assert answer.value.response.headers.get("connection") == "close"
                assert not answer.value.response.body
        finally:
            registry.draining = False
        assert called == [] and refused._value.get() == before + 2
        assert not server.server_state.connections
        async with connect(url + "/room") as client:  # the flag is read per upgrade
            await client.send("hi")
            assert await client.recv() == "echo:hi"
