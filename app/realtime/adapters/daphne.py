"""daphne's private API: its WebSocket protocol patched for close codes and client limits.

daphne closes sockets through autobahn's `sendClose`, which accepts only 1000 and 3000-4999
from applications and raises on anything else: `close(code=1012)` never reached the client,
the drain's close was lost and clients saw 1006 when the process exited. 1008 (policy
violation) and 1012 (service restart) are registered in the IANA WebSocket close code
registry for exactly our uses, and browsers accept them, so the frame is sent directly.

The limits of app/realtime/server/limits.py hold here as under uvicorn: a message over the
maximum size gets a 1009 close frame (autobahn's server default resets the connection) and
the server reads on, discarding, until the client's close frame or linger_seconds (not bounded
in bytes: autobahn offers no count); a client that leaves more than send_buffer_bytes in
Twisted's write buffer for slow_client_seconds is closed with 4008. In both cases the
application is told at once (and hears nothing more from the socket), and what it still sends
is dropped instead of raising into it.

Relied on: `daphne.ws_protocol.WebSocketProtocol` (patched for daphne's whole process: daphne
offers no hook): its `serverClose`, `serverSend` and `onOpen`, its attributes `muted` and
`application_queue`, its `transport` (a Twisted TCP transport, on which daphne's HTTP channel
stays registered as the producer after the upgrade), and autobahn's methods it inherits
(adapters/autobahn.py).
"""

import logging

from daphne.ws_protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from app.realtime.adapters import autobahn as autobahn_adapter
from app.realtime.server.limits import MESSAGE_TOO_BIG, SLOW_CLIENT, SocketLimits

PACKAGE = "daphne"
SUPPORTED = ">=4.2,<4.3"

logger = logging.getLogger(__name__)

REGISTERED = frozenset({1001, 1008, 1011, 1012, 1013})
_server_close = WebSocketProtocol.serverClose
_server_send = WebSocketProtocol.serverSend
_on_open = WebSocketProtocol.onOpen
_limits = SocketLimits()


def server_close(self, code=None):
    """Send registered close codes as a raw close frame; anything else as daphne does."""
    if code in REGISTERED:
        self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
        return
    _server_close(self, code)


def server_send(self, content, binary=False):
    """Send as daphne does while the socket is open; drop what comes after a close frame."""
    if autobahn_adapter.accepts_sends(self):
        _server_send(self, content, binary)


def on_open(self):
    """daphne's onOpen, then the slow-client watch on the connection's write buffer."""
    _on_open(self)
    transport = self.transport
    try:
        transport.unregisterProducer()  # daphne's HTTP channel, gone since the upgrade
        transport.bufferSize = _limits.send_buffer_bytes
        transport.registerProducer(SlowClientWatch(self), True)
    except (AttributeError, RuntimeError):
        # Not a plain TCP transport (TLS terminated by daphne): the rule does not apply.
        logger.warning("no slow-client watch on %r", transport)


def message_too_big(self, size, max_size, reason):
    """autobahn's hook for a message over the maximum: a 1009 close frame, then linger."""
    tell_application(self, MESSAGE_TOO_BIG)
    autobahn_adapter.refuse_message(self, MESSAGE_TOO_BIG, "message too big",
                                    _limits.linger_seconds)


def tell_application(protocol, code: int) -> None:
    """Queue the application's disconnect now; mute the socket (no second disconnect)."""
    if not protocol.muted and hasattr(protocol, "application_queue"):
        protocol.application_queue.put_nowait({"type": "websocket.disconnect", "code": code})
    protocol.muted = True


@implementer(IPushProducer)
class SlowClientWatch:
    """Twisted pauses its producer while the write buffer is over bufferSize: time that."""

    def __init__(self, protocol):
        self.protocol = protocol
        self.timer = None

    def pauseProducing(self):
        """The buffer is over the limit (called on every write while it stays over)."""
        if self.timer is None and autobahn_adapter.accepts_sends(self.protocol):
            from twisted.internet import reactor

            self.timer = reactor.callLater(_limits.slow_client_seconds, self.expire)

    def resumeProducing(self):
        """The client read the buffer empty."""
        self.stopProducing()

    def stopProducing(self):
        """The connection is gone, or the client caught up."""
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def expire(self):
        """Over the limit for slow_client_seconds: close with 4008 after what is buffered."""
        self.timer = None
        protocol = self.protocol
        if not autobahn_adapter.accepts_sends(protocol):
            return
        tell_application(protocol, SLOW_CLIENT)
        autobahn_adapter.close(protocol, SLOW_CLIENT, "slow client", _limits.linger_seconds)


def install(limits: SocketLimits | None = None) -> None:
    """Patch daphne's WebSocket protocol once (idempotent), applying `limits`."""
    global _limits
    if limits is not None:
        _limits = limits
    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol.serverSend = server_send
    WebSocketProtocol.onOpen = on_open
    setattr(WebSocketProtocol, autobahn_adapter.MESSAGE_TOO_BIG_HOOK, message_too_big)
