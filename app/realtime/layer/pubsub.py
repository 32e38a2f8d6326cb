"""Group sends as Redis PUBLISH: a process subscribes once per group it has members in.

The layer's default group send is one script that reads every member of the group in Redis
and writes each process a body naming its members: Redis's work grows with the room
(docs/channel-layer.md, "Redis's cost of a broadcast as the room grows"). With
`group_fanout="pubsub"` a group send is one PUBLISH to the group's Redis channel, whatever the
room's size; each process that has members subscribes to that channel once and hands every
message to its local members itself, through the same delivery path as inbox messages
(`ResilientRedisChannelLayer._deliver`).

Redis keeps no published message for a subscriber that is not connected: one published while
a process reconnects (a failover) does not reach it. Stored room events are recovered by each
member's gap fill (by `seq`, from the database); ephemeral frames published in that window
are not. Memberships live in this process only, so a new master has nothing to restore: the
subscriber subscribes again to every group that has local members.
"""

from __future__ import annotations

import asyncio
import logging

from app.realtime.layer.retrying import TRANSIENT_ERRORS, backoff_steps
from app.realtime.ops import metrics

logger = logging.getLogger(__name__)


class GroupSubscriptions:
    """One process's subscriptions to its groups' Redis channels, and the task reading them."""

    def __init__(self, layer):
        self.layer = layer
        self.prefix = f"{layer.prefix}fanout:"
        self.pubsub = None
        self.subscribed: set[str] = set()
        self.reader: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    def channel_of(self, group: str) -> str:
        """The Redis pub/sub channel a group's messages are published on."""
        return self.prefix + group

    async def publish(self, group: str, message: dict) -> int:
        """Publish a message to a group; how many processes received it."""
        return await self.layer.connection(0).publish(self.channel_of(group),
                                                      self.layer.serialize(message))

    async def add(self, group: str) -> None:
        """Subscribe to a group's channel unless this process is subscribed already."""
        if group in self.subscribed:
            return
        async with self.lock:
            if group not in self.subscribed:
                await self._connected().subscribe(self.channel_of(group))
                self.subscribed.add(group)
        self._ensure_reader()

    async def discard(self, group: str) -> None:
        """Unsubscribe from a group's channel (its last local member left)."""
        async with self.lock:
            if group in self.subscribed:
                self.subscribed.discard(group)
                await self._connected().unsubscribe(self.channel_of(group))

    async def reconnect(self) -> None:
        """Drop the subscriber connection and subscribe again to every group with members.

        After a failover the old connection may still reach the old master (frozen, or cut
        off and since demoted), where nobody publishes any more.
        """
        async with self.lock:
            old, self.pubsub = self.pubsub, None
            if old is not None:
                try:
                    await old.aclose()
                except Exception:  # the connection is already broken: nothing to close
                    pass
            groups = [g for g, members in self.layer.local_groups.items() if members]
            self.subscribed = set()
            if groups:
                await self._connected().subscribe(*(self.channel_of(g) for g in groups))
                self.subscribed = set(groups)

    def _connected(self):
        if self.pubsub is None:
            self.pubsub = self.layer.connection(0).pubsub(ignore_subscribe_messages=True)
        return self.pubsub

    def _ensure_reader(self) -> None:
        if self.reader is None or self.reader.done():
            self.reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def _read_forever(self) -> None:
        """Hand each published message to the group's local members; ride out failovers."""
        while True:
            pubsub = self.pubsub
            try:
                if pubsub is None or not pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                received = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_ERRORS as error:
                metrics.LAYER_RECEIVE_ERRORS.inc()
                self.layer._mark_error(error)
                await self._resubscribe_when_reachable()
                continue
            if received is None or received.get("type") != "message":
                continue
            name = received["channel"]
            group = (name.decode() if isinstance(name, bytes) else name)[len(self.prefix):]
            try:
                message = self.layer.deserialize(received["data"])
            except Exception:
                metrics.LAYER_RECEIVE_ERRORS.inc()
                logger.exception("channel layer subscriber failed on a message of %s", group)
                continue
            members = self.layer.local_groups.get(group)
            if members:
                await self.layer._deliver(list(members), message)

    async def _resubscribe_when_reachable(self) -> None:
        for step in backoff_steps(self.layer.backoff_max):
            await asyncio.sleep(step)
            try:
                await self.reconnect()
            except TRANSIENT_ERRORS:
                continue
            await self.layer._recover()
            return

    async def stop(self) -> None:
        """Stop reading and close the subscriber connection (tests, shutdown)."""
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
            self.reader = None
        if self.pubsub is not None:
            await self.pubsub.aclose()
            self.pubsub = None
        self.subscribed = set()
