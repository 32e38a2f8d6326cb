"""The consumers alive in this process, and the one heartbeat task that serves them all.

One task per process, rather than one per connection, sends heartbeats, refreshes presence
and group memberships, and closes idle sockets. It turns a wheel of `WHEEL_SLOTS` slots once
per `WS_HEARTBEAT_INTERVAL`: each consumer sits in one slot, so every socket still gets one
heartbeat per interval, but the work (frames, answers, Redis reads and writes) comes in small
even portions instead of one burst of the whole process every interval. Drain walks the same
registry.
"""

import asyncio
import collections
import logging
import random
import time

from django.conf import settings

from app.realtime.ops import metrics

logger = logging.getLogger(__name__)

# Slots of the heartbeat wheel. At the default 25 s interval a slot comes every second; a
# process beats a 25th of its sockets each second instead of all of them at once, a burst
# that showed in every broadcast's tail latency (docs/benchmarks.md).
WHEEL_SLOTS = 25


class Registry:
    """Live consumers of this process and the heartbeat loop over them."""

    def __init__(self):
        self.consumers: set = set()
        self.wheel: list[set] = [set() for _ in range(WHEEL_SLOTS)]
        self._placed = 0
        self.draining = False
        self.retry_max_ms = 3000
        self._ticker: asyncio.Task | None = None
        self._leaving: set[asyncio.Future] = set()  # drained sockets waiting for their close
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None

    def count_refusal(self) -> None:
        """Count one handshake refused because this process drains (by either refusal path)."""
        metrics.WS_REFUSED.labels("any", "draining").inc()

    def connect_slots(self) -> asyncio.Semaphore:
        """The semaphore that bounds the handshakes this process works on at once.

        In a reconnect storm (a drain, a failover) hundreds of handshakes arrive together.
        Run all at once, each holds its history, user list and query results while the others
        run, and the process keeps that peak as heap it cannot return (docs/benchmarks.md); one
        at a time per slot, they finish sooner too. Waiting handshakes hold only their scope.
        """
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots = asyncio.Semaphore(max(1, settings.WS_CONNECT_CONCURRENCY))
            self._slots_loop = loop
        return self._slots

    def add(self, consumer) -> None:
        """Register an accepted consumer in the next slot of the wheel; start the heartbeat."""
        if consumer not in self.consumers:
            self.consumers.add(consumer)
            # Round robin rather than a hash: sockets opened together spread over every slot.
            consumer.heartbeat_slot = self._placed % WHEEL_SLOTS
            self._placed += 1
            self.wheel[consumer.heartbeat_slot].add(consumer)
        self.ensure_heartbeat()

    def discard(self, consumer) -> None:
        """Forget a consumer that disconnected."""
        self.consumers.discard(consumer)
        slot = getattr(consumer, "heartbeat_slot", None)
        if slot is not None:
            self.wheel[slot].discard(consumer)

    def ensure_heartbeat(self) -> None:
        """Start the heartbeat task in the running loop if it is not running there."""
        loop = asyncio.get_running_loop()
        if self._ticker is None or self._ticker.done() or self._ticker.get_loop() is not loop:
            self._ticker = loop.create_task(self._heartbeat_forever())

    async def _heartbeat_forever(self) -> None:
        interval = settings.WS_HEARTBEAT_INTERVAL
        tick = interval / WHEEL_SLOTS
        # Processes started together should not turn their wheels in lockstep.
        await asyncio.sleep(random.uniform(0, tick))
        due = time.monotonic()
        slot = 0
        while True:
            try:
                await self.beat(self.wheel[slot])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat of slot %d failed", slot)
            slot = (slot + 1) % WHEEL_SLOTS
            # A fixed schedule, so the time slots take does not add up over a turn; after a
            # stall the wheel carries on from now rather than beating the missed slots at once.
            due = max(due + tick, time.monotonic())
            await asyncio.sleep(due - time.monotonic())

    async def beat(self, consumers=None) -> None:
        """Heartbeat these consumers (all when None): frames, then presence and memberships.

        Each consumer class beats its own in one call (`heartbeat_many`), so what it reads
        from Redis for them (the chat's room sequence) is one request, not one per socket.
        """
        from channels.layers import get_channel_layer

        from app.realtime.layer.store import get_store

        consumers = list(self.consumers if consumers is None else consumers)
        if not consumers:
            return
        by_class = collections.defaultdict(list)
        for consumer in consumers:
            by_class[type(consumer)].append(consumer)
        for cls, members in by_class.items():
            try:
                await cls.heartbeat_many(members)
            except Exception:
                logger.exception("heartbeat of %d %s failed", len(members), cls.__name__)
        alive = [c for c in consumers if c in self.consumers]
        entries = [entry for consumer in alive for entry in consumer.presence_entries()]
        if entries:
            try:
                await get_store().presence_touch_many(entries, settings.PRESENCE_TTL)
            except Exception as error:
                logger.warning("presence refresh failed: %r", error)
        layer = get_channel_layer()
        refresh = getattr(layer, "refresh_local_groups", None)
        if refresh is not None and alive:
            # Memberships age out after group_expiry unless refreshed, so a dead process's
            # memberships vanish in minutes while live ones never expire.
            await refresh({c.channel_name for c in alive if getattr(c, "channel_name", None)})

    async def drain(self, window: float, retry_max_ms: int) -> int:
        """Ask every client to reconnect elsewhere, closing them with 1012 paced over window."""
        self.draining = True
        self.retry_max_ms = retry_max_ms
        metrics.DRAINING.set(1)
        consumers = list(self.consumers)
        started = time.monotonic()
        # Operators read these two lines (kubectl logs) to see that a preStop drain really ran.
        logger.info("drain: asking %d clients to reconnect elsewhere over %.1f s",
                    len(consumers), window)
        # Paced by the clock, not by a sleep per client: on a busy loop each sleep lasts a
        # whole loop turn, and the drain ran several times past its window.
        pause = window / max(len(consumers), 1)
        total, sent = len(consumers), 0
        while sent < total:
            elapsed = time.monotonic() - started
            due = total if elapsed >= window else int(total * elapsed / window) + 1
            for consumer in consumers[sent:due]:
                if consumer in self.consumers:
                    await self.send_away(consumer)
            sent = max(sent, due)
            if sent < total:
                await asyncio.sleep(pause)
        while self._leaving:  # the last closes, and those of handshakes that ended meanwhile
            await asyncio.gather(*self._leaving)
        logger.info("drain: done, %d clients asked to reconnect in %.1f s",
                    len(consumers), time.monotonic() - started)
        return len(consumers)

    async def send_away(self, consumer) -> None:
        """Tell one client to reconnect elsewhere (with its resume position); close it later.

        The close 1012 comes DRAIN_CLOSE_GRACE after the `reconnect` frame, from a task of its
        own: a frame the client sent before it read `reconnect` is still on its way, and once
        the close is sent the server drops whatever arrives (a chat message sent then would be
        lost unanswered). Meanwhile the consumer goes on serving, the caller too.
        """
        frame = {
            "type": "reconnect",
            "reason": "drain",
            "retry_after_ms": random.randint(0, self.retry_max_ms),
        }
        position = consumer.resume_position()
        if position is not None:
            frame["last_seq"] = position
        try:
            await consumer.send_frame(frame)
        except Exception as error:
            if isinstance(error, client_gone()):
                logger.debug("drain: %s left before its reconnect frame", consumer)
            else:
                logger.exception("drain of one consumer failed")
            return
        metrics.DRAIN_RECONNECTS.inc()
        closing = asyncio.ensure_future(self._close_after_grace(consumer))
        self._leaving.add(closing)
        closing.add_done_callback(self._leaving.discard)

    async def _close_after_grace(self, consumer) -> None:
        await asyncio.sleep(settings.DRAIN_CLOSE_GRACE)
        if consumer not in self.consumers:
            return  # the client left first, as it may on `reconnect`
        try:
            await consumer.close(code=1012, reason="service restart")
        except Exception:
            logger.exception("drain of one consumer failed")


def client_gone() -> tuple[type[BaseException], ...]:
    """What a send to a socket whose client already closed raises."""
    # Imported here: the uvicorn adapter imports this module's registry.
    from app.realtime.adapters import uvicorn as uvicorn_adapter

    return uvicorn_adapter.CLIENT_GONE


registry = Registry()
