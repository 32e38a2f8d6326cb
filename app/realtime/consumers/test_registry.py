"""The process heartbeat: every socket once per interval, in small portions, never all at once."""

import asyncio
import collections
import time

from app.realtime.consumers.registry import WHEEL_SLOTS, Registry


class Beaten:
    """A stand-in consumer that records the heartbeat portions its class is given."""

    portions: list[list["Beaten"]] = []

    def __init__(self, n):
        self.channel_name = f"test.beaten!{n}"
        self.heartbeat_slot = None

    @classmethod
    async def heartbeat_many(cls, consumers):
        cls.portions.append(list(consumers))

    def presence_entries(self):
        return []


def test_sockets_are_dealt_round_robin_over_the_wheel_and_leave_their_slot():
    """Sockets opened together fill every slot evenly; a closed socket leaves its slot."""
    registry = Registry()
    registry.ensure_heartbeat = lambda: None  # no loop here; the wheel alone is tested
    consumers = [Beaten(n) for n in range(2 * WHEEL_SLOTS)]
    for consumer in consumers:
        registry.add(consumer)
    registry.add(consumers[0])  # added twice: still once in the wheel
    assert [len(slot) for slot in registry.wheel] == [2] * WHEEL_SLOTS
    registry.discard(consumers[0])
    assert consumers[0] not in registry.wheel[consumers[0].heartbeat_slot]
    assert sum(len(slot) for slot in registry.wheel) == 2 * WHEEL_SLOTS - 1


async def test_a_turn_of_the_wheel_beats_every_socket_a_slot_at_a_time(settings):
    """Within about one interval each socket is beaten, and no portion holds more than a slot."""
    settings.WS_HEARTBEAT_INTERVAL = 0.5
    Beaten.portions = []
    registry = Registry()
    consumers = [Beaten(n) for n in range(3 * WHEEL_SLOTS)]
    started = time.monotonic()
    for consumer in consumers:
        registry.add(consumer)
    try:
        for _ in range(500):
            beaten = {c for portion in Beaten.portions for c in portion}
            if len(beaten) == len(consumers):
                break
            await asyncio.sleep(0.01)
    finally:
        registry._ticker.cancel()
    assert beaten == set(consumers)
    assert max(len(portion) for portion in Beaten.portions) == 3
    # The last slot comes (WHEEL_SLOTS - 1) ticks after the first: spread over the interval.
    assert time.monotonic() - started > settings.WS_HEARTBEAT_INTERVAL / 2


async def test_beat_without_a_slot_beats_everyone_at_once():
    """`beat()` is one round of every socket (tests and tools use it to force a heartbeat)."""
    Beaten.portions = []
    registry = Registry()
    registry.ensure_heartbeat = lambda: None
    consumers = [Beaten(n) for n in range(5)]
    for consumer in consumers:
        registry.add(consumer)
    await registry.beat()
    assert [set(p) for p in Beaten.portions] == [set(consumers)]


async def closed_send(message):
    """What uvicorn's send does once the client has gone."""
    from uvicorn.protocols.utils import ClientDisconnected

    raise ClientDisconnected()


def client_left(channel_name: str):
    """A real consumer whose client has gone: every send, ASGI or direct, raises as uvicorn's."""
    from app.realtime.consumers.base import RealtimeConsumer

    consumer = RealtimeConsumer()
    consumer.channel_name = channel_name
    consumer._send = consumer.base_send = closed_send
    return consumer


async def test_a_heartbeat_to_a_client_gone_since_the_last_beat_is_no_error(caplog):
    """uvicorn's send raises for a socket closed meanwhile; its disconnect cleans up, quietly."""
    from app.realtime.consumers.base import RealtimeConsumer

    consumer = client_left("test.gone!1")
    with caplog.at_level("DEBUG", logger="app.realtime.consumers.base"):
        await RealtimeConsumer.heartbeat_many([consumer])
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    assert "the client is gone" in caplog.records[0].getMessage()


class Leaving:
    """A stand-in consumer that records when it was asked to reconnect, and its close."""

    def __init__(self, registry, asked: list):
        self.registry, self.asked, self.closed = registry, asked, None

    def resume_position(self):
        return 7

    async def send_frame(self, frame):
        self.asked.append((time.monotonic(), frame))

    async def close(self, code=None, reason=None):
        self.closed = code
        self.registry.consumers.discard(self)


async def test_a_drain_on_a_busy_loop_still_ends_within_its_window(settings):
    """Every loop turn blocked 20 ms (a busy process): 300 clients over a 0.3 s window are all
    asked within about the window, not one loop turn each, and each is closed with 1012."""
    settings.DRAIN_CLOSE_GRACE = 0.01
    registry, asked = Registry(), []
    registry.ensure_heartbeat = lambda: None
    consumers = [Leaving(registry, asked) for _ in range(300)]
    registry.consumers.update(consumers)
    turns, busy = [], True

    def block():
        time.sleep(0.02)
        turns.append(time.monotonic())
        if busy:
            asyncio.get_running_loop().call_soon(block)

    asyncio.get_running_loop().call_soon(block)
    started = time.monotonic()
    try:
        assert await registry.drain(window=0.3, retry_max_ms=0) == 300
    finally:
        busy = False
    assert len(asked) == 300 and {frame["last_seq"] for _, frame in asked} == {7}
    # Counted in loop turns, not seconds: a loaded machine stretches each turn (and so the
    # window's share of them) but not their number. Pacing by one sleep per client would take
    # one turn per client.
    window_turns = sum(t <= started + 0.3 for t in turns)
    asking_turns = sum(t <= asked[-1][0] for t in turns)
    assert asking_turns <= window_turns + 3 < len(consumers) / 4
    assert {consumer.closed for consumer in consumers} == {1012}


class LeftFirst(Leaving):
    """A stand-in consumer whose client closed before the drain reached it."""

    async def send_frame(self, frame):
        await closed_send(frame)


async def test_a_client_that_left_before_its_reconnect_frame_is_no_error(settings, caplog):
    """A drain that finds a client gone moves on quietly to the next one."""
    settings.DRAIN_CLOSE_GRACE = 0.01
    registry, asked = Registry(), []
    registry.ensure_heartbeat = lambda: None
    registry.consumers.update([LeftFirst(registry, asked), Leaving(registry, asked)])
    with caplog.at_level("DEBUG", logger="app.realtime.consumers.registry"):
        assert await registry.drain(window=0.05, retry_max_ms=0) == 2
    assert len(asked) == 1
    levels = collections.Counter(r.levelname for r in caplog.records)
    assert levels == {"INFO": 2, "DEBUG": 1}, caplog.text
    assert "left before its reconnect frame" in caplog.text


async def test_closing_a_socket_whose_client_left_is_no_error(caplog):
    """The page closes its side on `reconnect`: the drain's 1012 then finds it gone, quietly
    (and so does a heartbeat's close of an idle socket)."""
    consumer = client_left("test.gone!2")
    with caplog.at_level("DEBUG", logger="app.realtime.consumers.base"):
        await consumer.close(code=1012, reason="service restart")
    assert consumer.closing
    levels = collections.Counter(r.levelname for r in caplog.records)
    assert levels == {"DEBUG": 1}, caplog.text
    assert "left before its close" in caplog.text
