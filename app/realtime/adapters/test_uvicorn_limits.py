"""FanoutWebSocketProtocol's limits over real sockets: 1009 with a lingering close, slow clients."""

import asyncio
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import connect as connect_sync
from websockets.uri import parse_uri

from app.realtime.adapters.test_uvicorn import serve
from app.realtime.server.limits import SocketLimits

MiB = 1 << 20


class RawClient:
    """A WebSocket client whose reading the test controls: websockets' sans-I/O over a socket."""

    def __init__(self, reader, writer, url):
        self.reader, self.writer = reader, writer
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)

    @classmethod
    async def open(cls, url: str, receive_buffer: int | None = None) -> "RawClient":
        """Connect and complete the opening handshake."""
        sock = socket.socket()
        if receive_buffer:  # a small window: the server's bytes wait in the server
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        client = cls(reader, writer, url)
        client.protocol.send_request(client.protocol.connect())
        client.flush()
        (response,) = await client.events(1)
        assert isinstance(response, Response) and response.status_code == 101
        return client

    def flush(self) -> None:
        """Write what the protocol has to send."""
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def events(self, count: int) -> list:
        """Read until `count` events (handshake response, frames) have arrived."""
        events = []
        while len(events) < count:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError(f"end of stream after {events}")
            self.protocol.receive_data(data)
            events += self.protocol.events_received()
        return events

    async def until_close(self) -> tuple[list[bytes], Close]:
        """Read frames up to the server's close frame: (payloads before it, the close)."""
        frames = []
        while True:
            for event in await self.events(1):
                if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    return frames, Close.parse(event.data)
                frames.append(event.data)

    async def end_of_stream(self, timeout: float) -> float:
        """Seconds until the server ends the TCP connection; a reset fails the test."""
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return time.monotonic() - started

    async def watch(self, seconds: float, answer_pings: bool,
                    chatter: float | None = None) -> tuple[int, int | None]:
        """Read for `seconds`, sending a text frame every `chatter` s if given, answering the
        server's pings or not: (pings received, the server's close code or None)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        next_chat = loop.time()
        pings, code = 0, None
        while (now := loop.time()) < end and code is None:
            if chatter is not None and now >= next_chat:
                self.protocol.send_text(b"hi")
                self.flush()
                next_chat = now + chatter
            wait = (min(end, next_chat) if chatter is not None else end) - now
            try:
                data = await asyncio.wait_for(self.reader.read(65536), max(wait, 0.001))
            except TimeoutError:
                continue
            if not data:
                break
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if event.opcode is Opcode.PING:
                    pings += 1
                elif event.opcode is Opcode.CLOSE:
                    code = Close.parse(event.data).code
            if answer_pings:
                self.flush()
            else:
                self.protocol.data_to_send()  # the queued pongs are dropped
        return pings, code

    def close(self) -> None:
        self.writer.transport.abort()


def oversized(size: int) -> tuple[bytes, bytes]:
    """A client's text frame of `size` bytes, split after its header and the first bytes."""
    frame = Frame(Opcode.TEXT, b"x" * size).serialize(mask=True)
    return frame[:1000], frame[1000:]


def masked_close(code: int = CloseCode.MESSAGE_TOO_BIG) -> bytes:
    return Frame(Opcode.CLOSE, Close(code, "").serialize()).serialize(mask=True)


def recording_app(seen: list):
    """Accept, then record each event (with its time) until the disconnect.

    Then send once more, as a consumer may before it reads its disconnect: a failure is
    recorded too (raised, it would end a consumer before its cleanup).
    """

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            seen.append((message, time.monotonic()))
            if message["type"] == "websocket.disconnect":
                break
        try:
            await send({"type": "websocket.send", "text": "late"})
        except Exception as error:  # what a consumer would have died of
            seen.append(({"type": "late send failed", "error": repr(error)}, time.monotonic()))

    return app


def send_oversized(url: str, message: str) -> tuple:
    """Send `message` with websockets' blocking client: (close frame received, frame sent)."""
    with connect_sync(url, max_size=None, compression=None, close_timeout=10) as client:
        try:
            client.send(message)  # blocks until every byte is written: a reset fails it
            client.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd, closed.sent
    raise AssertionError("the connection stayed open")


@pytest.mark.parametrize("size", [2 * MiB, 8 * MiB, 64 * MiB], ids=["2MiB", "8MiB", "64MiB"])
async def test_a_message_far_over_ws_max_size_gets_1009_not_a_reset(size):
    """The client, still sending, gets the close frame and answers it; three times over."""
    seen = []
    message = "x" * size
    async with serve(recording_app(seen), ws_max_size=MiB) as (_, url):
        for attempt in range(3):
            received, sent = await asyncio.to_thread(send_oversized, url, message)
            assert received is not None, f"attempt {attempt}: reset, no close frame"
            assert received.code == 1009 and sent is not None and sent.code == 1009
    assert [message.get("code") for message, _ in seen] == [1009] * 3, seen


async def test_after_1009_the_server_reads_on_until_the_clients_close_frame():
    """The rest of the refused message is discarded; only the client's close frame ends it."""
    seen = []
    async with serve(recording_app(seen), ws_max_size=MiB) as (_, url):
        client = await RawClient.open(url)
        try:
            head, rest = oversized(8 * MiB)
            client.writer.write(head)
            _, close = await client.until_close()
            assert close.code == 1009
            client.writer.write(rest[:MiB])
            await client.writer.drain()
            await asyncio.sleep(0.3)
            client.writer.write(rest[MiB:])  # still accepted: the server lingers
            await client.writer.drain()
            client.writer.write(masked_close())
            assert await client.end_of_stream(timeout=5) < 2  # a FIN, at once, not a reset
        finally:
            client.close()
    assert [message for message, _ in seen] == [
        {"type": "websocket.disconnect", "code": 1009, "reason": seen[0][0]["reason"]}]


async def test_a_client_that_never_finishes_is_cut_off_after_linger_seconds():
    """The lingering close is bounded in time."""
    limits = SocketLimits(linger_seconds=0.5)
    async with serve(recording_app([]), limits=limits, ws_max_size=MiB) as (_, url):
        client = await RawClient.open(url)
        try:
            head, _ = oversized(8 * MiB)
            client.writer.write(head)
            await client.until_close()
            started = time.monotonic()
            with pytest.raises((ConnectionError, EOFError)):
                await client.events(1)
            assert 0.4 < time.monotonic() - started < 3
        finally:
            client.close()


async def test_a_client_that_keeps_sending_is_cut_off_after_linger_bytes():
    """The lingering close is bounded in bytes: a client cannot make the server read forever."""
    limits = SocketLimits(linger_seconds=30, linger_bytes=4 * MiB)
    async with serve(recording_app([]), limits=limits, ws_max_size=MiB) as (_, url):
        client = await RawClient.open(url)
        try:
            head, rest = oversized(64 * MiB)
            client.writer.write(head)
            await client.until_close()
            started = time.monotonic()
            with pytest.raises(ConnectionError):
                for offset in range(0, len(rest), MiB):
                    client.writer.write(rest[offset:offset + MiB])
                    await client.writer.drain()
            assert time.monotonic() - started < 10
        finally:
            client.close()


def flooding_app(seen: list, chunks: int | None = None):
    """Send 64 KiB frames through ASGI send (waiting while paused) and record the disconnect.

    With `chunks`, stop after that many; otherwise flood until the socket is closed.
    """
    chunk = "x" * 65536

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        stop = asyncio.Event()

        async def flood():
            sent = 0
            while not stop.is_set() and (chunks is None or sent < chunks):
                await send({"type": "websocket.send", "text": chunk})
                sent += 1
                await asyncio.sleep(0)

        flooding = asyncio.create_task(flood())
        message = await receive()
        seen.append((message, time.monotonic()))
        stop.set()
        try:
            await flooding
            seen.append(("flood ended", None))
        except Exception as error:  # what a consumer would have died of
            seen.append((error, None))

    return app


async def test_a_client_that_stops_reading_is_closed_with_4008_after_slow_client_seconds():
    """More than send_buffer_bytes unread for slow_client_seconds: 4008, behind the backlog."""
    seen = []
    limits = SocketLimits(send_buffer_bytes=64 * 1024, slow_client_seconds=0.5)
    async with serve(flooding_app(seen), limits=limits) as (_, url):
        started = time.monotonic()
        client = await RawClient.open(url, receive_buffer=4096)
        try:
            while len(seen) < 2:
                await asyncio.sleep(0.05)
                assert time.monotonic() - started < 10, seen
            (disconnect, closed_at), (flood_end, _) = seen
            assert disconnect == {"type": "websocket.disconnect", "code": 4008,
                                  "reason": "slow client"}
            assert 0.5 <= closed_at - started < 3
            assert flood_end == "flood ended"  # the waiting send returned, nothing raised
            frames, close = await client.until_close()  # the client reads again: all, then 4008
            assert frames and close.code == 4008
            client.writer.write(masked_close(4008))
            assert await client.end_of_stream(timeout=5) < 2
        finally:
            client.close()


async def test_a_client_that_catches_up_within_slow_client_seconds_stays_open():
    """A burst that the client reads down in time is not a slow client."""
    seen = []
    limits = SocketLimits(send_buffer_bytes=64 * 1024, slow_client_seconds=1.0)
    async with serve(flooding_app(seen, chunks=64), limits=limits) as (_, url):
        async with connect(url, max_size=None, compression=None) as client:
            await asyncio.sleep(0.4)  # not reading: 4 MiB wait in buffers
            for _ in range(64):
                await client.recv()
            await asyncio.sleep(1.2)
            assert seen == []
        while len(seen) < 2:  # noqa: ASYNC110 (the app records; nothing to wait on)
            await asyncio.sleep(0.05)
    assert seen[0][0]["code"] == 1000
    assert seen[1][0] == "flood ended"


async def test_a_close_while_paused_waits_for_nothing_and_comes_after_every_frame():
    """The application's close (a drain's 1012) neither waits for room nor overtakes frames."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        for number in range(100):  # more than the kernel buffers hold: the writes pause
            await send({"type": "websocket.send", "text": f"{number:04d}" + "x" * 65532})
        await send({"type": "websocket.close", "code": 1012})
        seen.append("close sent")
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async with serve(app, limits=SocketLimits(slow_client_seconds=30)) as (_, url):
        client = await RawClient.open(url, receive_buffer=4096)
        try:
            started = time.monotonic()
            while not seen:
                await asyncio.sleep(0.05)
                assert time.monotonic() - started < 5, "the close waited for the client"
            frames, close = await client.until_close()
            assert [frame[:4] for frame in frames] == [b"%04d" % n for n in range(100)]
            assert close.code == 1012
        finally:
            client.close()


async def test_a_client_heard_from_is_not_pinged_a_silent_one_is():
    """Keep-alive pings go only to clients that sent nothing since the last one was due."""
    async with serve(ws_ping_interval=0.2, ws_ping_timeout=0.5) as (_server, url):
        chatty, silent = await RawClient.open(url), await RawClient.open(url)
        try:
            (chatty_pings, chatty_code), (silent_pings, silent_code) = await asyncio.gather(
                chatty.watch(1.2, answer_pings=True, chatter=0.05),
                silent.watch(1.2, answer_pings=True))
        finally:
            chatty.close()
            silent.close()
    assert chatty_pings == 0
    # Its pong counts as hearing from it: every other ping is skipped, not all of them.
    assert silent_pings >= 2
    assert chatty_code is None and silent_code is None


async def test_a_client_that_answers_nothing_is_closed_after_the_ping_timeout():
    """Silence and no pong: 1011 within two ping intervals and the timeout."""
    async with serve(ws_ping_interval=0.2, ws_ping_timeout=0.3) as (_server, url):
        client = await RawClient.open(url)
        try:
            pings, code = await client.watch(2.0, answer_pings=False)
        finally:
            client.close()
    assert pings == 1
    assert code == 1011
