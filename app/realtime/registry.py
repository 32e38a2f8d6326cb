"""The consumers alive in this process, and the one heartbeat task that serves them all.

One task per process, rather than one per connection, sends heartbeats, refreshes presence
and group memberships in a single Redis pipeline each, and closes idle sockets. Drain walks
the same registry.
"""

import asyncio
import logging
import random

from django.conf import settings

from . import metrics

logger = logging.getLogger(__name__)


class Registry:
    """Live consumers of this process and the heartbeat loop over them."""

    def __init__(self):
        self.consumers: set = set()
        self.draining = False
        self.retry_max_ms = 3000
        self._ticker: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None

    def connect_slots(self) -> asyncio.Semaphore:
        """The semaphore that bounds the handshakes this process works on at once.

        In a reconnect storm (a drain, a failover) hundreds of handshakes arrive together.
        Run all at once, each holds its history, user list and query results while the others
        run, and the process keeps that peak as heap it cannot return (a third of its memory
        per idle socket, measured in docs/benchmarks.md); one at a time per slot, they finish
        sooner too. Waiting handshakes hold only their scope.
        """
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots = asyncio.Semaphore(max(1, settings.WS_CONNECT_CONCURRENCY))
            self._slots_loop = loop
        return self._slots

    def add(self, consumer) -> None:
        """Register an accepted consumer and make sure the heartbeat runs."""
        self.consumers.add(consumer)
        self.ensure_heartbeat()

    def discard(self, consumer) -> None:
        """Forget a consumer that disconnected."""
        self.consumers.discard(consumer)

    def ensure_heartbeat(self) -> None:
        """Start the heartbeat task in the running loop if it is not running there."""
        loop = asyncio.get_running_loop()
        if self._ticker is None or self._ticker.done() or self._ticker.get_loop() is not loop:
            self._ticker = loop.create_task(self._heartbeat_forever())

    async def _heartbeat_forever(self) -> None:
        interval = settings.WS_HEARTBEAT_INTERVAL
        # Processes started together should not heartbeat in lockstep.
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat round failed")
            await asyncio.sleep(interval)

    async def beat(self) -> None:
        """One heartbeat round: frames to every client, then presence and groups refreshed."""
        from channels.layers import get_channel_layer

        from .store import get_store

        consumers = list(self.consumers)
        for consumer in consumers:
            try:
                await consumer.on_heartbeat()
            except Exception:
                logger.exception("heartbeat of %s failed", getattr(consumer, "channel_name", "?"))
        alive = [c for c in consumers if c in self.consumers]
        entries = [entry for consumer in alive for entry in consumer.presence_entries()]
        if entries:
            try:
                await get_store().presence_touch_many(entries, settings.PRESENCE_TTL)
            except Exception as error:
                logger.warning("presence refresh failed: %r", error)
        layer = get_channel_layer()
        refresh = getattr(layer, "refresh_local_groups", None)
        if refresh is not None:
            # Memberships age out after group_expiry unless refreshed, so a dead process's
            # memberships vanish in minutes while live ones never expire.
            await refresh()

    async def drain(self, window: float, retry_max_ms: int) -> int:
        """Ask every client to reconnect elsewhere, closing them with 1012 paced over window."""
        self.draining = True
        self.retry_max_ms = retry_max_ms
        metrics.DRAINING.set(1)
        consumers = list(self.consumers)
        pause = window / max(len(consumers), 1)
        for consumer in consumers:
            if consumer in self.consumers:
                await self.send_away(consumer)
                await asyncio.sleep(pause)
        return len(consumers)

    async def send_away(self, consumer) -> None:
        """Tell one client to reconnect elsewhere (with its resume position), then close 1012."""
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
            await consumer.close(code=1012, reason="service restart")
            metrics.DRAIN_RECONNECTS.inc()
        except Exception:
            logger.exception("drain of one consumer failed")


registry = Registry()
