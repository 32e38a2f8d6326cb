"""websockets' private API, as the uvicorn WebSocket protocol (adapters/uvicorn.py) uses it.

Relied on: a server connection's `parser` generator, `reader.buffer` and `reader.eof`, and
`Protocol.parse`, the base frame parser (`forget_request`); `extensions`, what the handshake
negotiated (`negotiated_extensions`); `Frame.serialize(mask=False)` (`text_frame`); that
`Protocol.parse` calls `self.fail(1009)` for an oversized frame right after reading its length,
before its mask, with the bytes read past the length still in `reader.buffer` (which `fail`
then discards), and the attributes `available_extensions`, `max_message_size`,
`max_fragment_size`, `logger` and `parser_exc` (`RefusalAwareServerProtocol`,
`oversized_frame_rest`). The sans-I/O `state` and `State.OPEN` are public and used directly.
"""

from websockets.exceptions import PayloadTooBig
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol

PACKAGE = "websockets"
# Its minor releases rework the sans-I/O internals (17.0 changed header decoding).
SUPPORTED = ">=17.4,<17.5"


def forget_request(conn) -> None:
    """Make a server connection parse frames with a parser that does not hold the request.

    websockets' server parser keeps the upgrade request as a local of its generator, which then
    parses every frame for the socket's life. At a frame boundary with nothing buffered the
    base frame parser is exactly where the server's parser stands, minus the request.
    """
    if not conn.reader.buffer and not conn.reader.eof:
        conn.parser = Protocol.parse(conn)
        next(conn.parser)


def negotiated_extensions(conn) -> list:
    """The extensions (permessage-deflate) the handshake agreed on; fixed after the 101."""
    return conn.extensions


def text_frame(text: str) -> bytes:
    """The bytes of an unmasked, unfragmented text frame, as a server sends it uncompressed."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


class RefusalAwareServerProtocol(ServerProtocol):
    """websockets' server protocol, keeping what it had read past a refused frame's length.

    The parser refuses a message over max_size as soon as it has read the frame's length, then
    discards everything buffered. Kept, those bytes tell where the refused frame ends, so the
    lingering close can find the client's close frame after it (oversized_frame_rest).
    """

    read_past_refusal = b""

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection as websockets does, first keeping the unread bytes of a 1009."""
        if code == CloseCode.MESSAGE_TOO_BIG and self.state is OPEN:
            self.read_past_refusal = bytes(self.reader.buffer)
        super().fail(code, reason)


def refusal_aware(conn: ServerProtocol, logger=None) -> RefusalAwareServerProtocol:
    """A fresh RefusalAwareServerProtocol configured as `conn` (before its handshake), logging
    to `logger` when given."""
    return RefusalAwareServerProtocol(
        extensions=conn.available_extensions,
        max_size=(conn.max_message_size, conn.max_fragment_size),
        logger=logger if logger is not None else conn.logger,
    )


def oversized_frame_rest(conn) -> tuple[int, bytes] | None:
    """After a 1009 refusal: (bytes of the refused frame still to come, bytes read after it).

    None when the connection did not fail on an oversized message. A refusal by the deflate
    extension happens after the whole frame was read: nothing of it is still to come.
    """
    error = conn.parser_exc
    if not isinstance(error, PayloadTooBig):
        return None
    read = getattr(conn, "read_past_refusal", b"")
    if error.size is None:
        return 0, read
    rest = 4 + error.size  # a client's frames are masked: the mask key, then the payload
    if len(read) >= rest:
        return 0, read[rest:]
    return rest - len(read), b""
