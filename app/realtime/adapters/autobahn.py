"""autobahn's private API, as daphne's WebSocket protocol (adapters/daphne.py) inherits it.

Relied on, on a server protocol instance: `sendCloseFrame` (which, for a close the server
starts, arms `closeHandshakeTimeout` and then aborts the connection if the client has not
answered), `_fail_connection` and the hook `_max_message_size_exceeded` that autobahn calls for
a message over maxMessagePayloadSize, `failByDrop` (True, autobahn's server default, makes
`_fail_connection` reset the connection instead of sending a close frame) and `failedByMe`
(once set, autobahn discards the payload still arriving instead of keeping it), and `state`
with `STATE_CONNECTING` / `STATE_OPEN`.
"""

from autobahn.websocket.protocol import WebSocketProtocol

PACKAGE = "autobahn"
SUPPORTED = ">=26.10,<26.11"

MESSAGE_TOO_BIG_HOOK = "_max_message_size_exceeded"


def close(protocol, code: int, reason: str, linger_seconds: float) -> None:
    """Send a close frame now; abort the connection if the client has not answered in time."""
    protocol.closeHandshakeTimeout = linger_seconds
    protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)


def refuse_message(protocol, code: int, reason: str, linger_seconds: float) -> None:
    """Fail the connection with a close frame (not autobahn's reset), discarding what follows.

    The client, still sending the refused message, gets the close frame first; the server keeps
    reading (and dropping) until the client's close frame or linger_seconds.
    """
    protocol.failByDrop = False
    protocol.closeHandshakeTimeout = linger_seconds
    protocol._fail_connection(code, reason[:123])


def accepts_sends(protocol) -> bool:
    """Whether sendMessage would send (it raises once a close frame has gone out)."""
    return protocol.state in (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_OPEN)
