"""Redis commands of many callers sent as one pipeline: one round trip per event-loop turn.

In a reconnect storm a process runs hundreds of handshakes at once, each with a few small
Redis commands (the session, tokens, a rate-limit count, the room's presence). Sent one by
one, each command costs redis-py's whole per-call path (a pooled connection, a timeout, a
write, a wake-up, a read); that path was most of a handshake's CPU. A `Coalescer` collects
the commands callers issue during one turn of the event loop and sends them together on the
next turn, so the path is paid once per turn rather than once per command. A lone caller
waits one loop turn, no more. The client's socket timeout bounds the pipeline's round trip as a
whole, not each reply (`execute_bounded`, app/realtime/adapters/redis.py).

Under load a turn holds only a few callers, so one pipeline per turn is still a pipeline per
handshake step. While a pipeline is in flight, later callers wait for its replies and then go
together in the next one (as ioredis' auto-pipelining does): the busier the process, the more
each round trip carries, and Redis's replies pace the batches. A pipeline that has not come back
within `stall` seconds (a frozen or failing Redis) no longer holds the next one back, so a hung
round trip delays the callers behind it by `stall`, not by its socket timeout.

Each caller's commands stay together and in order, and each caller gets only its own
replies. A command Redis answers with an error fails that caller alone; a connection error
fails every caller of that pipeline, and each retries as it would have alone (the store's
`riding_failover`).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

from redis import asyncio as aioredis

from app.realtime.adapters.redis import execute_bounded
from app.realtime.ops.background import spawn


class Coalescer:
    """Batches the commands of concurrent callers on one client into shared pipelines."""

    def __init__(self, client: aioredis.Redis, stall: float = 0.05):
        self.client = client
        self.stall = stall
        # The client's socket timeout bounds each pipeline's whole round trip.
        self.timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._pending: list[tuple[Callable, asyncio.Future]] = []
        self._in_flight = 0
        self._sent_at = 0.0  # loop time the newest pipeline in flight was sent
        self._flush_handle: asyncio.Handle | None = None

    async def run(self, build: Callable) -> list:
        """Add `build(pipe)`'s commands to the next shared pipeline; return their replies.

        `build` receives a redis-py pipeline (no transaction) and queues commands on it, as
        on any pipeline. It runs when the pipeline is sent: on the next loop turn, or when
        the pipeline in flight comes back.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((build, future))
        if self._flush_handle is None:
            if self._in_flight:
                self._flush_handle = loop.call_at(self._sent_at + self.stall, self._flush)
            else:
                self._flush_handle = loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._in_flight += 1
        self._sent_at = asyncio.get_running_loop().time()
        spawn(self._send(batch))

    def _returned(self) -> None:
        """A pipeline came back: what waited for it goes on the next turn."""
        self._in_flight -= 1
        if self._pending and not self._in_flight:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            # call_soon, not now: callers its replies wake run first and join this batch.
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[tuple[Callable, asyncio.Future]]) -> None:
        try:
            await self._execute(batch)
        finally:
            self._returned()

    async def _execute(self, batch: list[tuple[Callable, asyncio.Future]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        spans = []
        for build, future in batch:
            start = len(pipe)
            try:
                build(pipe)
            except Exception as error:  # a caller's bug fails that caller, not the batch
                _fail(future, error)
            spans.append((start, len(pipe), future))
        try:
            replies = await execute_bounded(pipe, self.timeout)
        except BaseException as error:
            for _, _, future in spans:
                # Each caller raises its own copy: one instance raised in several tasks
                # would collect all their tracebacks.
                _fail(future, copy.copy(error))
            if not isinstance(error, Exception):
                raise
            return
        for start, end, future in spans:
            if future.done():
                continue  # cancelled while waiting, or its build failed
            mine = replies[start:end]
            error = next((reply for reply in mine if isinstance(reply, Exception)), None)
            if error is None:
                future.set_result(mine)
            else:
                future.set_exception(error)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)
