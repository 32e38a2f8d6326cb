"""daphne's private API: its WebSocket protocol's close, so registered close codes get through.

daphne closes sockets through autobahn's `sendClose`, which accepts only 1000 and 3000-4999
from applications and raises on anything else: `close(code=1012)` never reached the client,
the drain's close was lost and clients saw 1006 when the process exited. 1008 (policy
violation) and 1012 (service restart) are registered in the IANA WebSocket close code
registry for exactly our uses, and browsers accept them, so the frame is sent directly.

Relied on: `daphne.ws_protocol.WebSocketProtocol.serverClose` (patched, for daphne's whole
process: daphne offers no hook) and the `sendCloseFrame` it inherits from autobahn.
"""

from daphne.ws_protocol import WebSocketProtocol

PACKAGE = "daphne"
SUPPORTED = ">=4.2,<4.3"

REGISTERED = frozenset({1001, 1008, 1011, 1012, 1013})
_server_close = WebSocketProtocol.serverClose


def server_close(self, code=None):
    """Send registered close codes as a raw close frame; anything else as daphne does."""
    if code in REGISTERED:
        self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
        return
    _server_close(self, code)


def install() -> None:
    """Patch daphne's WebSocket protocol once (idempotent)."""
    WebSocketProtocol.serverClose = server_close
