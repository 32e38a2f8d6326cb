"""Group sends as Redis PUBLISH: a process subscribes once per group it has members in.

The layer's default group send is one script that reads every member of the group in Redis
and writes each process a body naming its members: Redis's work grows with the room
(docs/channel-layer.md, "Redis's cost of a broadcast as the room grows"). With
`group_fanout="pubsub"` a group send is one PUBLISH to the group's Redis channel, whatever the
room's size; each process that has members subscribes to that channel once and hands every
message to its local members itself, through the same delivery path as inbox messages
(`ResilientRedisChannelLayer._deliver`).

Redis keeps no published message for a subscriber that is not connected, so the same script
also appends the message to the group's stream, trimmed to the layer's `expiry` (the time an
unread inbox message lives): a process that subscribes again (its connection broke, or
Sentinel named a new master) first reads, from each of its groups' streams, what it missed
since the last message it delivered, then goes on with the subscription. Each message is
published with its stream ID, and a process delivers only IDs above the last it delivered
for the group, so what the catch-up and the subscription both bring arrives once. Lost for
good: what the old master had not replicated when it died (as with the script fan-out), and
what a process missed for longer than `expiry`. Memberships live in this process only, so a
new master has nothing to restore: the subscriber subscribes again to every group that has
local members.
"""

from __future__ import annotations

import asyncio
import logging

from app.realtime.layer.retrying import TRANSIENT_ERRORS, backoff_steps
from app.realtime.ops import metrics

logger = logging.getLogger(__name__)

# KEYS: the group's stream, its pub/sub channel. ARGV: the message, the stream's retention in
# milliseconds, its key's expiry in seconds. Redis 7 replicates a script by its effects, so the
# ID that XADD draws here is the one the replicas and a promoted replica hold. A full Redis
# (maxmemory, noeviction) refuses the XADD but not the PUBLISH: the message then goes out
# unstored, marked "-", as a plain PUBLISH would.
PUBLISH_LUA = """
    local now = redis.call('TIME')
    local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ARGV[2]
    local id = redis.pcall('XADD', KEYS[1], 'MINID', '~', oldest, '*', 'm', ARGV[1])
    if type(id) == 'table' then
        id = '-'
    else
        redis.call('EXPIRE', KEYS[1], ARGV[3])
    end
    return redis.call('PUBLISH', KEYS[2], id .. ' ' .. ARGV[1])
"""


def parse_id(raw: bytes | str) -> tuple[int, int] | None:
    """A stream ID ("<ms>-<seq>") as a tuple that orders as Redis orders IDs; None for "-"."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text == "-":
        return None  # published unstored (a full Redis)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class GroupSubscriptions:
    """One process's subscriptions to its groups' channels on one shard, and their reader."""

    def __init__(self, layer, shard: int = 0):
        self.layer = layer
        self.shard = shard
        self.prefix = f"{layer.prefix}fanout:"
        self.pubsub = None
        self.subscribed: set[str] = set()
        # The stream ID of the last message delivered for each subscribed group (or the
        # group's last ID when it was subscribed): where a catch-up starts.
        self.delivered: dict[str, tuple[int, int]] = {}
        self.reader: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.script = None  # PUBLISH_LUA, sent by its SHA (loaded again on a new master)
        # A reconnect failed: the reader keeps trying until one succeeds (a watcher's attempt
        # during a failover can fail and leave no connection behind).
        self.broken = False
        # Connections a reconnect replaced, closed by the reader once it no longer reads them:
        # closed under a read, a connection goes back to the pool while still being read.
        self.retired: list = []

    def channel_of(self, group: str) -> str:
        """The Redis pub/sub channel a group's messages are published on."""
        return self.prefix + group

    def stream_of(self, group: str) -> str:
        """The Redis stream keeping a group's recent messages for catch-ups."""
        return f"{self.layer.prefix}recent:{group}"

    def _connection(self):
        return self.layer.connection(self.shard)

    async def publish(self, group: str, message: dict) -> int:
        """Publish a message to a group and keep it in its stream; how many processes got it."""
        expiry = int(self.layer.expiry)
        connection = self._connection()
        if self.script is None:
            self.script = connection.register_script(PUBLISH_LUA)
        return await self.script(
            keys=[self.stream_of(group), self.channel_of(group)],
            args=[self.layer.serialize(message), expiry * 1000, expiry], client=connection)

    async def add(self, group: str) -> None:
        """Subscribe to a group's channel unless this process is subscribed already.

        The group's last stream ID is read first: a catch-up after a reconnect starts there,
        and what was sent before the subscription is not this process's to deliver.
        """
        if group in self.subscribed:
            return
        async with self.lock:
            if group not in self.subscribed:
                last = await self._connection().xrevrange(self.stream_of(group), count=1)
                self.delivered[group] = parse_id(last[0][0]) if last else (0, 0)
                await self._connected().subscribe(self.channel_of(group))
                self.subscribed.add(group)
        self._ensure_reader()

    async def discard(self, group: str) -> None:
        """Unsubscribe from a group's channel (its last local member left)."""
        async with self.lock:
            if group in self.subscribed:
                self.subscribed.discard(group)
                self.delivered.pop(group, None)
                await self._connected().unsubscribe(self.channel_of(group))

    async def reconnect(self) -> None:
        """Subscribe again on a new connection to every group with members, and catch up.

        After a failover the old connection may still reach the old master (frozen, or cut
        off and since demoted), where nobody publishes any more. The new connection is handed
        to the reader only after the catch-up, so that nothing it brings overtakes what the
        streams held.
        """
        async with self.lock:
            old, self.pubsub = self.pubsub, None
            if old is not None:
                self.retired.append(old)
            groups = [g for g, members in self.layer.local_groups.items()
                      if members and self.layer.consistent_hash(g) == self.shard]
            self.subscribed = set()
            for gone in set(self.delivered) - set(groups):
                del self.delivered[gone]
            if not groups:
                return
            pubsub = self._connection().pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*(self.channel_of(g) for g in groups))
                await self._catch_up(groups)
            except BaseException:
                self.broken = True
                self.retired.append(pubsub)
                raise
            self.pubsub = pubsub
            self.subscribed = set(groups)
            self.broken = False

    async def _catch_up(self, groups: list[str]) -> None:
        """Deliver what each group's stream holds after the last message delivered for it."""
        pipe = self._connection().pipeline(transaction=False)
        for group in groups:
            ms, seq = self.delivered.setdefault(group, (0, 0))
            pipe.xrange(self.stream_of(group), min=f"({ms}-{seq}")
        caught_up = 0
        for group, entries in zip(groups, await pipe.execute(), strict=True):
            for raw_id, fields in entries:
                if await self._hand_over(group, parse_id(raw_id), fields[b"m"]):
                    caught_up += 1
        if caught_up:
            metrics.PUBSUB_CAUGHT_UP.inc(caught_up)
            logger.warning("pub/sub shard %s: %d messages missed while resubscribing, "
                           "delivered from the groups' streams",
                           self.layer.shard_names[self.shard], caught_up)

    async def _hand_over(self, group: str, message_id: tuple[int, int] | None,
                         body: bytes) -> bool:
        """Deliver a message to the group's local members unless it was delivered already."""
        if message_id is not None:
            if message_id <= self.delivered.get(group, (0, 0)):
                return False
            self.delivered[group] = message_id
        try:
            message = self.layer.deserialize(body)
        except Exception:
            metrics.LAYER_RECEIVE_ERRORS.inc()
            logger.exception("channel layer subscriber failed on a message of %s", group)
            return False
        members = self.layer.local_groups.get(group)
        if members:
            await self.layer._deliver(list(members), message)
        return True

    def _connected(self):
        if self.pubsub is None:
            self.pubsub = self._connection().pubsub(ignore_subscribe_messages=True)
        return self.pubsub

    def _ensure_reader(self) -> None:
        if self.reader is None or self.reader.done():
            self.reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def _read_forever(self) -> None:
        """Hand each published message to the group's local members; ride out failovers."""
        while True:
            while self.retired:
                await self._close(self.retired.pop())
            pubsub = self.pubsub
            try:
                if pubsub is None or not pubsub.subscribed:
                    if self.broken:
                        await self._resubscribe_when_reachable()
                    else:
                        await asyncio.sleep(0.05)
                    continue
                received = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if pubsub is not self.pubsub:
                    continue  # a reconnect replaced the connection under us: read the new one
                self.broken = True
                # Whatever the error, this task must go on: nothing else reads the
                # subscriptions, and a dead reader would silence every group of the shard.
                if not isinstance(error, TRANSIENT_ERRORS):
                    logger.exception("pub/sub reader of shard %s failed",
                                     self.layer.shard_names[self.shard])
                metrics.LAYER_RECEIVE_ERRORS.inc()
                self.layer._mark_error(error, self.shard)
                await self._resubscribe_when_reachable()
                continue
            if received is None or received.get("type") != "message":
                continue
            name = received["channel"]
            group = (name.decode() if isinstance(name, bytes) else name)[len(self.prefix):]
            raw_id, _, body = received["data"].partition(b" ")
            await self._hand_over(group, parse_id(raw_id), body)

    async def _resubscribe_when_reachable(self) -> None:
        # Called by the reader only, which reads no connection meanwhile: the ones a long
        # outage's failed attempts retire are closed as it goes.
        for step in backoff_steps(self.layer.backoff_max):
            await asyncio.sleep(step)
            while self.retired:
                await self._close(self.retired.pop())
            try:
                await self.reconnect()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not isinstance(error, TRANSIENT_ERRORS):
                    logger.warning("pub/sub resubscribe on shard %s failed: %r",
                                   self.layer.shard_names[self.shard], error)
                continue
            await self.layer._recover(self.shard)
            return

    @staticmethod
    async def _close(pubsub) -> None:
        try:
            await pubsub.aclose()
        except Exception:  # the connection is broken already: nothing to close
            pass

    async def stop(self) -> None:
        """Stop reading and close the subscriber connections (tests, shutdown)."""
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
            self.reader = None
        for pubsub in [*self.retired, self.pubsub]:
            if pubsub is not None:
                await self._close(pubsub)
        self.retired, self.pubsub = [], None
        self.subscribed = set()
        self.delivered = {}
