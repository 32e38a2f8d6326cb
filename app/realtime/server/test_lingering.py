"""The lingering close's reader finds a client's close frame behind anything it still sends."""

import os

from websockets.frames import Close, CloseCode, Frame, Opcode

from app.realtime.server.lingering import CloseFrameWatch


def client_frame(opcode: Opcode, payload: bytes) -> bytes:
    """A frame as a client sends it: masked."""
    return Frame(opcode, payload).serialize(mask=True)


def client_close() -> bytes:
    return client_frame(Opcode.CLOSE, Close(CloseCode.MESSAGE_TOO_BIG, "").serialize())


def test_the_close_frame_is_found_after_the_rest_of_a_refused_message():
    """What is left of the refused frame is skipped by count, then frames are walked."""
    watch = CloseFrameWatch(skip=1000, budget=1 << 20)
    assert watch.feed(os.urandom(999)) is False
    stream = b"x" + client_close()
    assert watch.feed(stream) is True
    assert watch.close_received and watch.discarded == 999 + len(stream)


def test_payloads_that_look_like_close_frames_are_skipped_whatever_their_length():
    """Data frames of every length encoding (7-bit, 16-bit, 64-bit) are stepped over whole."""
    fake_close = client_close() * 3
    frames = b"".join(client_frame(Opcode.TEXT, fake_close + bytes(size))
                      for size in (0, 100, 1000, 70_000))
    frames += client_frame(Opcode.PING, b"ping")
    watch = CloseFrameWatch(skip=0, budget=1 << 20)
    assert watch.feed(frames) is False
    assert not watch.close_received


def test_a_close_frame_arriving_a_byte_at_a_time_is_complete_only_with_its_last_byte():
    """The server must not close with part of the close frame unread (a reset would follow)."""
    watch = CloseFrameWatch(skip=0, budget=1 << 20)
    close = client_close()
    for byte in close[:-1]:
        assert watch.feed(bytes([byte])) is False
    assert watch.feed(close[-1:]) is True


def test_an_empty_close_frame_ends_the_watch():
    """A close frame without a code has no payload to wait for."""
    watch = CloseFrameWatch(skip=0, budget=100)
    assert watch.feed(client_frame(Opcode.CLOSE, b"")) is True


def test_the_byte_budget_ends_the_watch_without_a_close_frame():
    """A client that keeps sending is given up on once the budget is spent."""
    watch = CloseFrameWatch(skip=10_000_000, budget=1000)
    assert watch.feed(bytes(1000)) is False
    assert watch.feed(b"x") is True
    assert not watch.close_received
