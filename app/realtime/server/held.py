"""Writes held back and sent as one: a transport stand-in for the frames of one handshake.

A handshake writes the 101 and then its join frames (welcome, user list, history or replay)
one at a time. On an asyncio transport with nothing buffered, each write is a `send` of its own,
and each segment is another read for nginx and for the client. Held, they go out in one.
"""

import asyncio


class HeldWrites:
    """Stands in for a transport: keeps what is written until `release`, then writes it as one.

    Everything else (closing, reading, buffer limits, extra info) is the real transport's. A
    close writes what is held first, so a close frame or a refusal still comes after the frames
    before it; an abort drops it, as an abort drops the real transport's own buffer.
    """

    def __init__(self, inner: asyncio.WriteTransport):
        self.inner = inner
        self.chunks: list[bytes] = []

    def write(self, data) -> None:
        """Keep `data` (a copy when it is a mutable buffer) for the one write at release."""
        self.chunks.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, lines) -> None:
        """Keep each buffer in `lines`."""
        for data in lines:
            self.write(data)

    def close(self) -> None:
        """Write what is held, then close the real transport."""
        self.release()
        self.inner.close()

    def abort(self) -> None:
        """Drop what is held and abort the real transport."""
        self.chunks.clear()
        self.inner.abort()

    def release(self) -> None:
        """Write what is held as one buffer, unless the real transport is closing already."""
        if self.chunks:
            data = b"".join(self.chunks)
            self.chunks.clear()
            if not self.inner.is_closing():
                self.inner.write(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)
