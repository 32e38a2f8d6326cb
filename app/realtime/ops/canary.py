"""The end-to-end canary: each WebSocket process sends to itself through the channel layer.

Health checks that only ping Redis stay green while broadcasts are silently lost (a stuck
reader, a full channel, a layer pointed at a demoted master). The canary takes the same path
as a broadcast and `/readyz` turns not-ready when it has failed for CANARY_FAIL_AFTER seconds.
"""

import asyncio
import logging
import time

from app.realtime.ops import metrics

logger = logging.getLogger(__name__)


class Canary:
    """Sends a timestamped message to a channel of this process and waits for it to arrive."""

    def __init__(self, layer, interval: float, fail_after: float):
        self.layer = layer
        self.interval = interval
        self.fail_after = fail_after
        self.started = time.monotonic()
        self.last_ok: float | None = None
        self._arrived: dict[int, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    @property
    def healthy(self) -> bool:
        """True if a canary came back within fail_after seconds (or we just started)."""
        reference = self.last_ok if self.last_ok is not None else self.started
        return time.monotonic() - reference <= self.fail_after

    def start(self) -> None:
        """Run the canary in the current event loop."""
        if self._task is None or self._task.done():
            self.started = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """Stop the canary task."""
        if self._task is not None:
            self._task.cancel()

    async def _listen(self, channel: str) -> None:
        while True:
            message = await self.layer.receive(channel)
            future = self._arrived.pop(message.get("n"), None)
            if future is not None and not future.done():
                future.set_result(message["sent"])

    async def _run(self) -> None:
        # The default "specific." prefix: the layer's one reader per process only pulls
        # `specific.<client prefix>!` from Redis, so any other prefix is never received.
        channel = await self.layer.new_channel()
        listener = asyncio.get_running_loop().create_task(self._listen(channel))
        number = 0
        try:
            while True:
                number += 1
                await self.probe(channel, number)
                metrics.CANARY_HEALTHY.set(1 if self.healthy else 0)
                await asyncio.sleep(self.interval)
        finally:
            listener.cancel()

    async def probe(self, channel: str, number: int) -> bool:
        """Send one canary and wait up to one interval for it; record lag or loss."""
        future = asyncio.get_running_loop().create_future()
        self._arrived[number] = future
        sent = time.time()
        metrics.CANARY_SENT.inc()
        try:
            await asyncio.wait_for(
                self.layer.send(channel, {"type": "canary.ping", "n": number, "sent": sent}),
                timeout=self.interval,
            )
            await asyncio.wait_for(asyncio.shield(future), timeout=self.interval)
        except Exception as error:
            self._arrived.pop(number, None)
            metrics.CANARY_LOST.inc()
            logger.warning("canary %s lost: %r", number, error)
            return False
        metrics.CANARY_LAG.observe(time.time() - sent)
        self.last_ok = time.monotonic()
        return True
