"""HeldWrites: what a handshake writes goes out as one write, in order, or not at all."""

from app.realtime.server.held import HeldWrites


class Transport:
    """The part of an asyncio transport HeldWrites touches, recording each call."""

    def __init__(self):
        self.calls = []
        self.closing = False

    def write(self, data):
        self.calls.append(("write", data))

    def close(self):
        self.calls.append(("close",))
        self.closing = True

    def abort(self):
        self.calls.append(("abort",))
        self.closing = True

    def is_closing(self):
        return self.closing

    def get_extra_info(self, name):
        return f"info:{name}"


def test_what_is_written_goes_out_once_and_in_order_at_release():
    inner = Transport()
    held = HeldWrites(inner)
    held.write(b"HTTP/1.1 101\r\n\r\n")
    held.writelines([b"one", bytearray(b"two")])
    held.write(memoryview(b"three"))
    assert inner.calls == []
    held.release()
    assert inner.calls == [("write", b"HTTP/1.1 101\r\n\r\nonetwothree")]
    held.release()  # nothing new held: nothing written
    assert len(inner.calls) == 1


def test_a_mutable_buffer_is_copied_when_written():
    held = HeldWrites(inner := Transport())
    buffer = bytearray(b"frame")
    held.write(buffer)
    buffer[:] = b"XXXXX"  # the writer reuses its buffer before the release
    held.release()
    assert inner.calls == [("write", b"frame")]


def test_a_close_writes_what_is_held_first():
    held = HeldWrites(inner := Transport())
    held.write(b"frames")
    held.write(b"close frame")
    held.close()
    assert inner.calls == [("write", b"framesclose frame"), ("close",)]


def test_an_abort_drops_what_is_held():
    held = HeldWrites(inner := Transport())
    held.write(b"frames")
    held.abort()
    held.release()
    assert inner.calls == [("abort",)]


def test_nothing_is_written_to_a_transport_already_closing():
    held = HeldWrites(inner := Transport())
    held.write(b"frames")
    inner.closing = True  # the client went away while the handshake ran
    held.release()
    assert inner.calls == []


def test_everything_else_is_the_real_transports():
    held = HeldWrites(inner := Transport())
    assert held.get_extra_info("peername") == "info:peername"
    assert held.is_closing() is False
    inner.closing = True
    assert held.is_closing() is True
