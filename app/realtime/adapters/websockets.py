"""websockets' private API, as the uvicorn WebSocket protocol (adapters/uvicorn.py) uses it.

Relied on: a server connection's `parser` generator, `reader.buffer` and `reader.eof`, and
`Protocol.parse`, the base frame parser (`forget_request`); `extensions`, what the handshake
negotiated (`negotiated_extensions`); `Frame.serialize(mask=False)` (`text_frame`). The
sans-I/O `state` and `State.OPEN` are public and used directly.
"""

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol

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
