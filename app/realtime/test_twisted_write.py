"""Twisted's TCP transport with the immediate write: same bytes, same order, fewer wake-ups."""

import socket

from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol

from . import twisted_write


class Reactor:
    """Just enough of a reactor to watch writer registrations."""

    def __init__(self):
        self.writers = []
        self.registrations = 0

    def addWriter(self, writer):  # Twisted names its interface methods in camelCase
        self.registrations += 1
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer):
        if writer in self.writers:
            self.writers.remove(writer)

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass


class Port:
    """What a Server asks of its listening port."""

    sessionno = 0
    _realPortNumber = 1


def transport(sndbuf: int | None = None):
    """A real accepted-connection transport over a socketpair, and the peer socket."""
    ours, peer = socket.socketpair()
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.setblocking(False)
    reactor = Reactor()
    server = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), Port(), 1, reactor)
    return server, peer, reactor


def read_all(peer: socket.socket, size: int) -> bytes:
    """Read exactly size bytes from the peer."""
    chunks, got = [], 0
    peer.settimeout(2)
    while got < size:
        chunk = peer.recv(size - got)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def test_an_idle_socket_is_written_at_once_without_registering_for_writability():
    """The common fan-out case: one frame, empty buffers, no reactor round."""
    server, peer, reactor = transport()
    twisted_write.write(server, b"frame-1")
    twisted_write.write(server, b"frame-2")
    assert reactor.registrations == 0
    assert read_all(peer, 14) == b"frame-1frame-2"


def test_what_the_kernel_does_not_take_is_queued_and_later_writes_keep_their_order():
    """A slow reader: the rest goes through Twisted's buffer, and nothing overtakes it."""
    server, peer, reactor = transport(sndbuf=4096)
    big = bytes(range(256)) * 4096  # 1 MiB: far more than the socket buffers hold
    twisted_write.write(server, big)
    assert reactor.writers == [server], "the remainder waits for writability"
    twisted_write.write(server, b"after")  # must queue behind the remainder, not jump ahead
    received = bytearray()
    peer.setblocking(False)
    while reactor.writers:
        try:
            received += peer.recv(1 << 20)
        except BlockingIOError:
            pass
        server.doWrite()
    received += read_all(peer, len(big) + 5 - len(received))
    assert bytes(received) == big + b"after"


def test_a_peer_that_went_away_is_left_to_twisted_to_report():
    """Errors never escape write(); doWrite reports the lost connection as before."""
    server, peer, reactor = transport()
    peer.close()
    twisted_write.write(server, b"x" * 100_000)  # EPIPE: the kernel takes nothing
    twisted_write.write(server, b"y")
    # Nothing raised; what was not sent waits for doWrite, which reports the lost connection.
    assert reactor.writers == [server]
    assert server.doWrite() is main.CONNECTION_LOST
