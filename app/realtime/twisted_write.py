"""Write to a daphne socket at once when nothing is queued, as asyncio's transports do.

Twisted's TCP transport never writes in `write()`: it queues the bytes, registers the socket
for writability (an epoll_ctl), sends from `doWrite` on the next reactor turn and unregisters
it (another epoll_ctl). On the fan-out path every WebSocket frame pays that round, and under
`AsyncioSelectorReactor` each registration also rebuilds a selector key. py-spy put the
registration churn at 12-15% and the reactor turn around `doWrite` at another 10% of a busy
WebSocket process (docs/benchmarks.md). When the socket's buffers are empty, sending at once
is what asyncio's own transports do; anything the kernel does not take, and every error, goes
the ordinary buffered way, so ordering, back-pressure and connection-loss handling are
Twisted's own.
"""

import os

from twisted.internet import tcp

# Twisted's own write: TLS-aware, buffered; everything the fast path does not finish goes here.
_buffered_write = tcp.Server.write


def write(self, data: bytes) -> None:
    """Send at once when nothing is queued and the kernel takes it; otherwise queue it."""
    if (not self.TLS and self.connected and not self._writeDisconnected and data
            and not self._tempDataLen and self.offset == len(self.dataBuffer)):
        try:
            sent = self.socket.send(data)
        except OSError:
            sent = 0  # would block, or an error that doWrite will report as connection loss
        if sent == len(data):
            return
        data = data[sent:]
    _buffered_write(self, data)


def install() -> None:
    """Patch the accepted-connection transport (idempotent); TWISTED_FAST_WRITE=0 disables."""
    if os.environ.get("TWISTED_FAST_WRITE", "1") != "0":
        tcp.Server.write = write
