"""A lean WebSocket client for the load generator: one asyncio protocol per socket, no tasks.

The generator shares the two cores with the servers it measures, so what it spends per received
frame lengthens every server's tail. The `websockets` asyncio client runs a reader task per
socket and hands each frame through a queue and a future; here `websockets`' own sans-I/O
protocol (handshake, framing, permessage-deflate, ping and close) sits in an `asyncio.Protocol`
whose `data_received` passes each message to a callback (docs/benchmarks.md, decisions,
round 11).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri


class Client(asyncio.Protocol):
    """One WebSocket: `on_message(client, str or bytes)` per message, `on_close(code)` at its end.

    Messages can arrive with the handshake's answer, before `connect` returns: the callback gets
    the client so that it can answer them.
    """

    def __init__(self, protocol: ClientProtocol, on_message=None, on_close=None):
        self.protocol = protocol
        self.on_message = on_message or (lambda client, message: None)
        self.on_close = on_close or (lambda code: None)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()  # resolves to the close code
        self._parts: list[bytes] = []
        self._text = False

    @classmethod
    async def connect(cls, url: str, headers: list[tuple[str, str]], timeout: float,
                      local_addr: tuple[str, int] | None = None, on_message=None,
                      on_close=None) -> Client:
        """Open `url` with extra handshake `headers`; raise what the handshake raised."""
        uri = _parsed(url)
        # The `websockets` client's own offer, as the generator made before (and browsers do).
        protocol = ClientProtocol(uri, extensions=enable_client_permessage_deflate(None),
                                  max_size=None)
        request = protocol.connect()
        for name, value in headers:
            request.headers[name] = value
        client = cls(protocol, on_message, on_close)
        loop = asyncio.get_running_loop()

        async def handshake() -> None:
            await loop.create_connection(lambda: client, uri.host, uri.port,
                                         local_addr=local_addr)
            protocol.send_request(request)
            client._flush()
            await client.handshake

        try:
            await asyncio.wait_for(handshake(), timeout)
        except BaseException:
            client.abort()
            raise
        return client

    @property
    def open(self) -> bool:
        """The handshake succeeded and no close has begun."""
        return self.protocol.state is State.OPEN and self.transport is not None

    @property
    def close_code(self) -> int | None:
        """The close code received, 1006 if the connection ended without one, None if open."""
        return self.protocol.close_code

    def connection_made(self, transport) -> None:
        """Keep the transport; `connect` writes the upgrade request."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Feed the bytes to the protocol and hand on each whole message."""
        handshake = self.handshake
        if handshake.done() and (handshake.cancelled() or handshake.exception() is not None):
            # `connect` gave up (its timeout) or the handshake failed: the caller counts this
            # connection as never made, so nothing on it may reach the caller. The answer can
            # still arrive before `connect` aborts the socket, and with it messages: a drill
            # counted them, and resumed from a position it had not been sent the events up to.
            self.abort()
            return
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Response):
                if handshake.done():  # connect gave up (its timeout)
                    self.abort()
                    return
                if protocol.handshake_exc is not None:
                    self.handshake.set_exception(protocol.handshake_exc)
                    self.transport.abort()
                    return
                self.handshake.set_result(None)
            elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._data_frame(event)
        self._flush()  # pongs, the reply to a close

    def _data_frame(self, frame) -> None:
        if frame.opcode is not Opcode.CONT:
            self._text = frame.opcode is Opcode.TEXT
            if frame.fin:  # the common case: one frame, one message
                self._deliver(frame.data)
                return
            self._parts = [frame.data]
            return
        self._parts.append(frame.data)
        if frame.fin:
            message, self._parts = b"".join(self._parts), []
            self._deliver(message)

    def _deliver(self, message: bytes) -> None:
        if self._text:
            try:
                message = message.decode()
            except UnicodeDecodeError:
                self.close(1007)
                return
        self.on_message(self, message)

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()  # the protocol's end of stream

    def connection_lost(self, exc) -> None:
        """The TCP connection ended: settle the futures and report the close once."""
        handshake = self.handshake
        was_open = (handshake.done() and not handshake.cancelled()
                    and handshake.exception() is None)
        self.protocol.receive_eof()
        if not handshake.done():
            handshake.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        if was_open:
            self.on_close(self.close_code)

    def send_text(self, text: str) -> bool:
        """Send a text message; False when the socket is no longer open."""
        if not self.open:
            return False
        self.protocol.send_text(text.encode())
        self._flush()
        return True

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server's close ends the connection."""
        if self.open:
            self.protocol.send_close(code)
            self._flush()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()

    async def aclose(self, code: int = 1000, timeout: float = 2.0) -> None:
        """Close and wait for the connection to end, aborting it after `timeout`."""
        self.close(code)
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.abort()


@functools.lru_cache(maxsize=1024)
def _parsed_base(url: str):
    return parse_uri(url)


def _parsed(url: str):
    """parse_uri(url), the part before the query parsed once per URL: a reconnect storm opens
    the same few room URLs thousands of times, with only ?last_seq= different."""
    base, mark, query = url.partition("?")
    uri = _parsed_base(base)
    return dataclasses.replace(uri, query=query) if mark else uri
