"""The lingering close's reader: a client's frames walked, never kept, until its close frame.

Once a server has refused a message over WS_MAX_SIZE, its WebSocket parser is finished (RFC
6455 §7.1.7: no more processing), yet the client may still be sending the rest of that message
and then its close frame. This walks the client's bytes frame by frame from the end of the
refused frame's header, skipping payloads, so the server can close the TCP connection as soon
as the client's close frame has arrived whole, and not before: closing with unread bytes makes
the kernel send a reset, which can overtake the server's close frame.
"""

# RFC 6455 §5.2: opcode of a close frame; the bits of the second header byte.
CLOSE_OPCODE = 0x8
_MASKED = 0x80
_LENGTH = 0x7F


class CloseFrameWatch:
    """Reads what a client sends after the server's close frame, discarding it, within a budget."""

    def __init__(self, skip: int, budget: int):
        self.skip = skip  # payload bytes of the current frame still to come
        self.budget = budget  # bytes the server will discard before giving up on the client
        self.discarded = 0
        self.header = bytearray()
        self.in_close_frame = False
        self.close_received = False

    @property
    def done(self) -> bool:
        """The client's close frame arrived whole, or the byte budget is spent."""
        return self.close_received or self.discarded > self.budget

    def feed(self, data: bytes) -> bool:
        """Discard bytes from the client; True once `done`."""
        self.discarded += len(data)
        position, end = 0, len(data)
        while position < end and not self.close_received:
            if self.skip:
                step = min(self.skip, end - position)
                self.skip -= step
                position += step
            else:
                self.header.append(data[position])
                position += 1
                self._read_header()
            if not self.skip and self.in_close_frame:
                self.close_received = True
        return self.done

    def _read_header(self) -> None:
        """Once the frame header held so far is complete, start skipping its payload."""
        header = self.header
        if len(header) < 2:
            return
        length = header[1] & _LENGTH
        extended = 2 if length == 126 else 8 if length == 127 else 0
        size = 2 + extended + (4 if header[1] & _MASKED else 0)
        if len(header) < size:
            return
        if extended:
            length = int.from_bytes(header[2:2 + extended], "big")
        self.in_close_frame = header[0] & 0x0F == CLOSE_OPCODE
        self.skip = length
        self.header = bytearray()
