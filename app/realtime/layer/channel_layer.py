"""channels_redis's RedisChannelLayer, made to ride through a Redis Sentinel failover.

Stock channels_redis raises ``ConnectionError``/``MasterNotFoundError`` for the 2-3 s a
failover takes; the exception escapes ``receive()`` inside the consumer's dispatch loop, so
every consumer of the process dies and every WebSocket is reset. This subclass changes three
things and nothing else about the wire format:

* one reader task per process pulls the process's messages from Redis, every waiting one in
  a round trip, and hands them to per-channel queues; it retries with bounded backoff
  instead of raising into consumers (this also removes the per-receive lock dance and the
  backup queue of ``RedisChannelLayer.receive``);
* ``group_add``/``group_discard``/``group_send`` retry for ``retry_seconds`` and then raise
  ``LayerUnavailable`` so callers can report the failure instead of dying on it;
* local group memberships are remembered and re-added on the new master when the layer
  recovers, or as soon as Sentinel names a new master, because the promoted replica may not
  have the last writes of the dead master (an idle layer would otherwise never notice);
* a write that a full Redis refuses (OOM: used memory over maxmemory, policy noeviction) is
  not retried but raised at once as ``RedisFull`` and counted; once writes pass again the
  memberships are all re-added, since they could not be refreshed meanwhile. (A group send is
  not refused: its script's first write, a trim, needs no memory, and Redis lets a script that
  has written run to its end. Live delivery goes on until the memberships expire.)
"""

import asyncio
import collections
import logging
import time
import weakref

from channels_redis.core import RedisChannelLayer
from redis import exceptions as redis_errors
from redis.asyncio.sentinel import SentinelConnectionPool

from app.realtime.adapters import channels_redis as channels_redis_adapter
from app.realtime.adapters import redis as redis_adapter
from app.realtime.consumers.delivery import RUN, WRITTEN, FanoutReceiver, WaitQueue
from app.realtime.layer import shards
from app.realtime.layer.coalescer import Coalescer
from app.realtime.layer.pubsub import GroupSubscriptions
from app.realtime.layer.retrying import (
    TRANSIENT_ERRORS,
    backoff_steps,
    retry_transient,
    sentinel_kwargs,
)
from app.realtime.ops import metrics

logger = logging.getLogger(__name__)


class LayerUnavailable(Exception):
    """The channel layer could not reach Redis within its retry window."""


class RedisFull(LayerUnavailable):
    """Redis refused a write because it is full: used memory over maxmemory (noeviction).

    Not retried: memory frees when keys expire or maxmemory is raised, minutes rather than a
    failover's seconds. A LayerUnavailable, so every caller already answers it as the protocol
    says (`unavailable`, close 4503, or `broadcast_failed` for a change already stored).
    """


class Mailbox(WaitQueue):
    """A process-local channel's pending messages and its waiting receiver.

    `idle` is true only while the consumer waits in `get()` with nothing pending: then no
    message it received earlier can still be on its way to its handler, so the reader may run
    the handler itself without overtaking anything (see ResilientRedisChannelLayer._deliver).
    """

    __slots__ = ()


class ResilientRedisChannelLayer(RedisChannelLayer):
    """A RedisChannelLayer whose receive loop and group operations survive a failover."""

    def __init__(self, *args, retry_seconds=8.0, backoff_max=0.25, read_batch=256,
                 group_fanout="script", **kwargs):
        super().__init__(*args, **kwargs)
        # Each host is a shard (a Sentinel-managed master or a server) holding the groups and
        # process inboxes that hash to it (app/realtime/layer/shards.py).
        self.shard_names = [shards.shard_name(host) for host in self.hosts]
        self.ring = shards.Ring(self.shard_names)
        if group_fanout not in ("script", "pubsub"):
            raise ValueError(f"group_fanout must be 'script' or 'pubsub', not {group_fanout!r}")
        # "pubsub": a group send is one PUBLISH and each process fans out to its own members
        # (app/realtime/layer/pubsub.py); "script": one script writes every process's inbox.
        self.group_fanout = group_fanout
        self._subscriptions: dict[asyncio.AbstractEventLoop, list[GroupSubscriptions]] = {}
        self.read_batch = read_batch
        self._bzmpop = True  # until Redis says it has no such command
        # A group send runs as one script where the group lives when the members' inboxes are
        # on that same Redis (one host: a Sentinel master or a plain server) with one capacity
        # for all, and bodies need no encryption (only Python can build those).
        self._one_trip = (self.ring_size == 1 and not self.channel_capacity
                          and not channels_redis_adapter.encrypted(self))
        # A retry costs one Sentinel query on a failed attempt, so retrying every 0.25 s is
        # cheap; a longer backoff only adds its jitter to every failover's recovery time.
        self.retry_seconds = retry_seconds
        self.backoff_max = backoff_max
        self._readers: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
        self._watchers: dict[asyncio.AbstractEventLoop, list[asyncio.Task]] = {}
        self.master_addresses: dict[int, tuple[str, int]] = {}  # by shard, as Sentinel names them
        self._queues: dict[str, Mailbox] = {}
        # Consumers the reader may hand fan-out events to directly (see _deliver).
        self._receivers: dict[str, FanoutReceiver] = {}
        self.local_groups: dict[str, set[str]] = collections.defaultdict(set)
        self.outages: dict[int, float] = {}  # shard -> when its outage began
        # Set while Redis refuses our writes for lack of memory (see _after_refusals).
        self.refused_since: float | None = None
        # By client (one per shard and event loop): a storm's group_add and group_discard of
        # one loop turn share a round trip (app/realtime/layer/coalescer.py).
        self._coalescers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        metrics.LAYER_AVAILABLE.set(1)

    def batch(self, shard: int):
        """The coalescer's `run` for a shard's client: commands sent with others of this turn."""
        client = self.connection(shard)
        coalescer = self._coalescers.get(client)
        if coalescer is None:
            coalescer = self._coalescers[client] = Coalescer(client)
        return coalescer.run

    # ------------------------------------------------------------------ outage bookkeeping
    def _mark_error(self, error: BaseException, shard: int = 0) -> None:
        """Note the start of an outage of `shard` (a failover, a partition) on its first error."""
        if shard not in self.outages:
            self.outages[shard] = time.monotonic()
            metrics.LAYER_FAILOVERS.inc()
            metrics.LAYER_AVAILABLE.set(0)
            logger.warning("channel layer lost Redis shard %s: %r",
                           self.shard_names[shard], error)

    async def _recover(self, shard: int | None = None) -> bool:
        """Probe a shard after an error (None: every shard in an outage); True once it answers.

        The probe is the re-adding of this process's memberships on that shard, so that the
        first operation after a failover already finds every local membership on the new
        master. Other shards' operations go on meanwhile: an outage is its shard's alone.
        """
        if shard is None:
            return all([await self._recover(index) for index in list(self.outages)])
        started = self.outages.get(shard)
        if started is None:
            return True
        try:
            await self._write_local_groups(shard=shard)
        except TRANSIENT_ERRORS:
            return False
        except redis_errors.OutOfMemoryError as error:
            # Reachable but full (a promoted replica is as full as its master was): the
            # outage is over, the memberships wait for memory (_after_refusals).
            self._count_refusal("memberships", error)
        if self.outages.get(shard) is not started:
            return True  # another caller's probe ended this outage while ours ran
        outage = time.monotonic() - started
        del self.outages[shard]
        metrics.LAYER_OUTAGE.observe(outage)
        if not self.outages:
            metrics.LAYER_AVAILABLE.set(1)
        logger.warning("channel layer reached Redis shard %s again after %.2fs",
                       self.shard_names[shard], outage)
        return True

    @property
    def is_available(self) -> bool:
        """True unless a shard of the layer is inside an outage window."""
        return not self.outages

    @property
    def master_address(self) -> tuple[str, int] | None:
        """The first shard's master as Sentinel names it (None before it is known)."""
        return self.master_addresses.get(0)

    def consistent_hash(self, value) -> int:
        """The shard holding a group or a process's inbox (rendezvous hashing, see shards.py).

        A process-local channel (`specific.<process>!<socket>`) is placed by its process part,
        where its inbox is: channels_redis's `send` hashes the whole name but its group send
        and receive the process part, so with several hosts a direct send (the canary's)
        went where the process never reads.
        """
        if self.ring_size == 1:
            return 0  # every send and group operation asks: no hashing for one shard
        if isinstance(value, str) and "!" in value:
            value = value[:value.index("!") + 1]
        return self.ring.index(value)

    # ------------------------------------------------------------------ a full Redis
    def _count_refusal(self, operation: str, error: BaseException) -> None:
        """Count a write a full Redis refused; log once when the refusals begin."""
        metrics.REDIS_OOM_REFUSALS.labels(operation).inc()
        if self.refused_since is None:
            self.refused_since = time.monotonic()
            logger.warning("Redis is full and refuses the channel layer's writes: %s", error)

    async def _after_refusals(self) -> None:
        """A write that needs memory passed: re-add every local membership, ending the refusals.

        Memberships could not be refreshed while Redis was full, so they may have aged out
        (group_expiry); the heartbeat would bring them back one slot at a time, this brings
        them all back at once. Only writes that Redis refuses when full (a membership's ZADD,
        a send) call it: a group send passes even then.
        """
        started = self.refused_since
        if started is None:
            return
        self.refused_since = None  # concurrent callers leave the re-adding to this one
        try:
            count = await self._write_local_groups()
        except redis_errors.OutOfMemoryError:
            # Full again already (memory freed for a moment): the next write tries again.
            metrics.REDIS_OOM_REFUSALS.labels("memberships").inc()
            self.refused_since = started
            return
        except TRANSIENT_ERRORS as error:
            self.refused_since = started
            self._mark_error(error)
            return
        metrics.GROUPS_REFRESHED.inc(count)
        logger.warning("Redis takes the channel layer's writes again after %.1fs; "
                       "%d memberships re-added", time.monotonic() - started, count)

    async def _retrying(self, operation, *args, name: str, counter=None, shard: int = 0):
        """Run an operation on `shard`, retrying transient Redis errors for retry_seconds.

        `name` labels the operation's OOM refusals, which are raised as RedisFull at once.
        """
        def retrying(error):
            self._mark_error(error, shard)
            if counter is not None:
                counter.inc()

        async def recover():
            await self._recover(shard)

        try:
            result = await retry_transient(operation, *args, seconds=self.retry_seconds,
                                           backoff_max=self.backoff_max, on_retry=retrying,
                                           after_sleep=recover)
        except TRANSIENT_ERRORS as error:
            self._mark_error(error, shard)
            raise LayerUnavailable(str(error)) from error
        except redis_errors.OutOfMemoryError as error:
            self._count_refusal(name, error)
            raise RedisFull(str(error)) from error
        if self.outages:
            await self._recover(shard)
        return result

    def create_pool(self, index):
        """A bounded pool whose callers wait for a connection (app/realtime/adapters/redis.py),
        its sentinel clients trying once each (see retrying.py)."""
        host = self.hosts[index]
        if "master_name" in host:
            host = {**host, "sentinel_kwargs": sentinel_kwargs(host.get("sentinel_kwargs"))}
        return redis_adapter.create_pool(host)

    # ------------------------------------------------------------------ receiving
    async def receive(self, channel):
        """Wait for the next message of a channel; never raises on Redis errors."""
        if "!" not in channel:
            # Normal (non-process-local) channels keep the stock behaviour, with retries.
            return await self._retrying(super().receive, channel, name="receive",
                                        shard=self.consistent_hash(channel))
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = Mailbox()
        self._ensure_reader()
        try:
            return await queue.get()
        except asyncio.CancelledError:
            # The consumer is gone: forget its queue so the reader stops feeding it.
            if queue.empty():
                self._queues.pop(channel, None)
            raise

    async def send(self, channel, message):
        """Send to one channel (the canary's path); a full Redis's refusal raises RedisFull."""
        try:
            await super().send(channel, message)
        except redis_errors.OutOfMemoryError as error:
            self._count_refusal("send", error)
            raise RedisFull(str(error)) from error
        if self.refused_since is not None:
            await self._after_refusals()

    async def stop_readers(self) -> None:
        """Cancel this process's reader tasks (tests, before their event loop closes)."""
        readers = [*self._readers.values(), *(w for ws in self._watchers.values() for w in ws)]
        self._readers.clear()
        self._watchers.clear()
        for subscriptions in self._subscriptions.pop(asyncio.get_running_loop(), []):
            await subscriptions.stop()
        for reader in readers:
            reader.cancel()
        current = [r for r in readers if r.get_loop() is asyncio.get_running_loop()]
        if current:
            # A reader blocked in BZPOPMIN may take up to brpop_timeout to notice.
            await asyncio.wait(current, timeout=2)

    def adopt_inbox(self, channel: str, inbox: WaitQueue) -> None:
        """Deliver a process-local channel's messages into `inbox` instead of a mailbox.

        A consumer served with a DirectSocket passes the server's own event queue: its frames
        and its channel messages then arrive in one FIFO, read by the one task that runs the
        consumer, instead of channels' two receiver tasks per socket
        (app/realtime/consumers/delivery.py).
        """
        self._queues[channel] = inbox
        self._ensure_reader()

    def register_receiver(self, channel: str, receiver: FanoutReceiver) -> None:
        """Let the reader hand this channel's messages to `receiver.take` while it is idle."""
        self._receivers[channel] = receiver

    def forget_channel(self, channel: str) -> None:
        """Drop a finished consumer's queue, registration and memberships."""
        self._queues.pop(channel, None)
        self._receivers.pop(channel, None)
        for group in [g for g, members in self.local_groups.items() if channel in members]:
            self.local_groups[group].discard(channel)
            if not self.local_groups[group]:
                del self.local_groups[group]

    def _ensure_reader(self) -> None:
        # One reader per event loop: tests run one loop each, servers run exactly one.
        loop = asyncio.get_running_loop()
        reader = self._readers.get(loop)
        if reader is None or reader.done():
            for tasks in (self._readers, self._watchers):
                for old in [old for old in tasks if old.is_closed()]:
                    del tasks[old]
            self._readers[loop] = loop.create_task(self._read_forever())
            self._watchers[loop] = [loop.create_task(self._watch_master(shard))
                                    for shard in range(self.ring_size)]

    async def _read_forever(self) -> None:
        """Pull this process's messages from Redis in batches and route them to channel queues."""
        local = f"specific.{self.client_prefix}!"
        index, key = self.consistent_hash(local), self.inbox_key()
        while True:
            try:
                batch = await self._pop_batch(index, key)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_ERRORS as error:
                metrics.LAYER_RECEIVE_ERRORS.inc()
                self._mark_error(error, index)
                # Probe before blocking in BZPOPMIN again, so recovery (and the re-added
                # memberships) happen as soon as the new master answers, not 5 s later.
                for step in backoff_steps(self.backoff_max):
                    await asyncio.sleep(step)
                    if await self._recover(index):
                        break
                continue
            if self.outages:
                await self._recover(index)
            for content in batch:
                try:
                    message = self.deserialize(content)
                    channels = message.pop("__asgi_channel__", local)
                except Exception:
                    # A message we cannot decode must not stop delivery for everyone else.
                    metrics.LAYER_RECEIVE_ERRORS.inc()
                    logger.exception("channel layer reader failed on a message")
                    continue
                await self._deliver(channels if isinstance(channels, list) else [channels],
                                    message)

    def inbox_key(self) -> str:
        """The Redis key holding every message for this process's channels."""
        return channels_redis_adapter.inbox_key(self)

    async def _pop_batch(self, index: int, key: str) -> list[bytes]:
        """Take up to read_batch messages off the process's Redis inbox, waiting for one.

        channels_redis's receive_single spends four round trips and a task per message (a
        backup-queue script, BZPOPMIN, ZADD to the backup, ZPOPMIN from it later). The backup
        lets another receiver take over a cancelled receive's message; nobody else ever reads
        this process's inbox (its name holds the process's random prefix), so here one BZMPOP
        (Redis 7) waits for a message and takes every one waiting. Older Redis: ZPOPMIN with a
        count, and BZPOPMIN when there was none.
        """
        connection = self.connection(index)
        if self._bzmpop:
            try:
                popped = await connection.bzmpop(self.brpop_timeout, 1, [key], min=True,
                                                 count=self.read_batch)
            except redis_errors.ResponseError as error:
                if str(error).startswith("UNBLOCKED"):
                    # The master this BZMPOP waited on was made a replica (a failover, a
                    # healed partition, an operator's REPLICAOF): the inbox lives on the new
                    # master now. As a ResponseError it would end the reader, and live
                    # delivery for every socket of the process with it.
                    raise redis_errors.ConnectionError(str(error)) from error
                if "unknown command" not in str(error).lower():
                    raise
                logger.warning("Redis has no BZMPOP (before 7.0): two round trips per read")
                self._bzmpop = False
            else:
                return [] if popped is None else [member for member, _score in popped[1]]
        popped = await connection.zpopmin(key, self.read_batch)
        if popped:
            return [member for member, _score in popped]
        popped = await connection.bzpopmin(key, timeout=self.brpop_timeout)
        return [] if popped is None else [popped[1]]

    async def _deliver(self, channels: list[str], message) -> None:
        """Hand a message to each local channel: straight to an idle consumer, else queued.

        A group send reaches every local member at once. Queued, each member pays a wake-up of
        its receive task and a round of its dispatch loop before its frame is written. A
        registered receiver that waits idle is offered the message here instead, in arrival
        order (`take`, app/realtime/consumers/delivery.py): it writes the frame at once when
        it can, or has the reader run its handler, or leaves the message to its inbox.
        """
        queues = self._queues
        receivers = self._receivers
        for name in channels:
            queue = queues.get(name)
            if queue is None:
                continue
            receiver = receivers.get(name)
            if receiver is not None and queue.idle:
                try:
                    verdict = receiver.take(message)
                    if verdict == WRITTEN:
                        continue
                    if verdict == RUN:
                        await receiver.dispatch(message)
                        continue
                except Exception:
                    logger.exception("direct delivery to %s failed", name)
                    continue
            queue.put(message)

    async def _watch_master(self, shard: int = 0, interval: float = 1.0) -> None:
        """Ask Sentinel for a shard's master every second; on a change, re-add its memberships.

        Only that shard's groups are re-added (and, with pub/sub fan-out, subscribed again):
        a failover of one shard leaves the others' traffic alone.
        """
        pool = self.connection(shard).connection_pool
        info = metrics.REDIS_MASTER.labels(self.shard_names[shard])
        if not isinstance(pool, SentinelConnectionPool):
            kwargs = pool.connection_kwargs
            info.info({"address": f"{kwargs.get('host')}:{kwargs.get('port')}"})
            return
        while True:
            try:
                address = await asyncio.wait_for(
                    pool.sentinel_manager.discover_master(pool.service_name), timeout=2
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                address = None  # no sentinel knows a master: the failover is in progress
            known = self.master_addresses.get(shard)
            if address is not None and address != known:
                if known is not None:
                    metrics.MASTER_CHANGES.inc()
                    logger.warning("Redis master of shard %s moved from %s to %s",
                                   self.shard_names[shard], known, address)
                    try:
                        await self.refresh_local_groups(shard=shard)
                    except Exception:
                        # The watcher must outlive any error: it is the only one watching.
                        logger.exception("re-adding shard %s's memberships failed",
                                         self.shard_names[shard])
                self.master_addresses[shard] = address
                info.info({"address": f"{address[0]}:{address[1]}"})
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ groups
    def subscriptions(self, group: str | None = None, shard: int | None = None
                      ) -> GroupSubscriptions:
        """This event loop's subscriptions (pub/sub fan-out) on a group's shard, or on `shard`."""
        loop = asyncio.get_running_loop()
        per_shard = self._subscriptions.get(loop)
        if per_shard is None:
            for old in [old for old in self._subscriptions if old.is_closed()]:
                del self._subscriptions[old]
            per_shard = self._subscriptions[loop] = [
                GroupSubscriptions(self, index) for index in range(self.ring_size)]
        if shard is None:
            shard = 0 if group is None else self.consistent_hash(group)
        return per_shard[shard]

    async def group_add(self, group, channel):
        """Add a channel to a group, remembering local memberships for re-adding later."""
        local = channel.startswith(f"specific.{self.client_prefix}!")
        if self.group_fanout == "pubsub":
            if not local:
                raise ValueError("with pub/sub fan-out only this process's channels join groups")
            self.local_groups[group].add(channel)
            self._ensure_reader()
            await self._retrying(self.subscriptions(group).add, group, name="group_add",
                                 shard=self.consistent_hash(group))
            return
        if local:
            self.local_groups[group].add(channel)
        await self._retrying(self._group_add_once, group, channel, name="group_add",
                             shard=self.consistent_hash(group))
        if self.refused_since is not None:
            await self._after_refusals()

    async def _group_add_once(self, group, channel):
        # channels_redis's group_add with its ZADD and EXPIRE in one round trip, not two.
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        key = channels_redis_adapter.group_key(self, group)

        def build(pipe):
            pipe.zadd(key, {channel: time.time()})
            pipe.expire(key, self.group_expiry)
        await self.batch(self.consistent_hash(group))(build)

    async def group_discard(self, group, channel):
        """Remove a channel from a group."""
        members = self.local_groups.get(group)
        if members is not None:
            members.discard(channel)
            if not members:
                del self.local_groups[group]
        if self.group_fanout == "pubsub":
            if group not in self.local_groups:
                await self._retrying(self.subscriptions(group).discard, group,
                                     name="group_discard", shard=self.consistent_hash(group))
            return
        await self._retrying(self._group_discard_once, group, channel, name="group_discard",
                             shard=self.consistent_hash(group))

    async def _group_discard_once(self, group, channel):
        # channels_redis's group_discard (one ZREM), sent with the others of this loop turn.
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        key = channels_redis_adapter.group_key(self, group)
        await self.batch(self.consistent_hash(group))(lambda pipe: pipe.zrem(key, channel))

    async def refresh_local_groups(self, channels=None, shard: int | None = None) -> None:
        """Re-add this process's memberships (of `channels`, of `shard`, if given), a pipeline
        per shard.

        The heartbeat refreshes a slot's channels at a time; a new master its shard's groups.
        """
        try:
            if self.group_fanout == "pubsub" and channels is None:
                # A new master: subscribe there (memberships live in this process only).
                for index in range(self.ring_size) if shard is None else [shard]:
                    await self.subscriptions(shard=index).reconnect()
            count = await self._write_local_groups(channels, shard)
        except TRANSIENT_ERRORS as error:
            # The next successful operation re-adds them again.
            self._mark_error(error, 0 if shard is None else shard)
            return
        except redis_errors.OutOfMemoryError as error:
            # The first refresh that passes re-adds them all (_after_refusals).
            self._count_refusal("memberships", error)
            return
        metrics.GROUPS_REFRESHED.inc(count)
        if self.refused_since is not None:
            await self._after_refusals()

    async def _write_local_groups(self, only=None, shard: int | None = None) -> int:
        """ZADD local memberships (of channels in `only`, of groups on `shard`, if given), a
        pipeline per shard; a whole refresh with nothing to write pings instead."""
        probed = range(self.ring_size) if shard is None else [shard]
        if self.group_fanout == "pubsub" or not self.local_groups:
            # Pub/sub: nothing is kept in Redis to refresh (the subscriber restores its
            # subscriptions). Either way, still a probe of the master.
            if only is None:
                for index in probed:
                    await self.connection(index).ping()
            return 0
        now = time.time()
        pipes = {}
        count = 0
        for group, channels in list(self.local_groups.items()):
            if only is not None:
                channels = channels & only  # CPython walks the smaller of the two
                if not channels:
                    continue
            index = self.consistent_hash(group)
            if shard is not None and index != shard:
                continue
            if index not in pipes:
                pipes[index] = self.connection(index).pipeline(transaction=False)
            key = channels_redis_adapter.group_key(self, group)
            pipes[index].zadd(key, {c: now for c in channels})
            pipes[index].expire(key, self.group_expiry)
            count += len(channels)
        for pipe in pipes.values():
            await pipe.execute()
        if only is None:
            for index in probed:
                if index not in pipes:
                    await self.connection(index).ping()  # a shard none of our groups is on
        return count

    async def group_send(self, group, message):
        """Send to a group, retrying through a failover; raises LayerUnavailable after that.

        A refusal by a full Redis would be raised at once, as RedisFull (a LayerUnavailable).
        """
        started = time.monotonic()
        try:
            await self._retrying(self._group_send_once, group, message, name="group_send",
                                 counter=metrics.GROUP_SEND_RETRIES,
                                 shard=self.consistent_hash(group))
        except LayerUnavailable:
            metrics.GROUP_SEND_FAILURES.inc()
            raise
        metrics.GROUP_SENDS.inc()
        metrics.GROUP_SEND_LATENCY.observe(time.monotonic() - started)

    async def _group_send_once(self, group, message):
        if self.group_fanout == "pubsub":
            await self.subscriptions(group).publish(group, message)
        elif self._one_trip:
            await self._group_send_in_redis(group, message)
        else:
            await self._group_send_mapped(group, message)

    async def _group_send_in_redis(self, group, message):
        """Send to a group in one round trip: Redis reads the members and fills the inboxes.

        channels_redis trims the group, reads every member into Python (ZRANGE: a 5000-member
        group is some 300 KB per send), groups them by inbox and sends a body per inbox: three
        round trips. Here one script does that where the members are. The bodies are
        byte-for-byte what channels_redis would write: its random prefix, then the message
        packed with `__asgi_channel__` last, whose value (the inbox's channel list) the script
        appends with its own msgpack.
        """
        token, body_prefix = channels_redis_adapter.group_body(self, message)
        now = time.time()
        over_capacity = await self.connection(0).eval(
            GROUP_SEND_IN_REDIS_LUA, 1, channels_redis_adapter.group_key(self, group),
            token, body_prefix, self.prefix, now, self.expiry, int(now) - int(self.expiry),
            int(now) - self.group_expiry, self.capacity,
        )
        self._count_over_capacity(over_capacity, group)

    async def _group_send_mapped(self, group, message):
        # A copy of RedisChannelLayer.group_send (channels_redis 4.3.0) with two changes: the
        # over-capacity count the Lua script returns is exported as a metric instead of only
        # being logged at INFO level, where nobody sees silent drops; and the group is trimmed
        # and read in one round trip. Used when members may live on several Redis hosts.
        key = channels_redis_adapter.group_key(self, group)
        # The stock trim and read of the group are two round trips; one pipeline here.
        pipe = self.connection(self.consistent_hash(group)).pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _trimmed, members = await pipe.execute()
        channel_names = [x.decode("utf8") for x in members]
        (
            connection_to_channel_keys,
            channel_keys_to_message,
            channel_keys_to_capacity,
        ) = channels_redis_adapter.map_channel_keys(self, channel_names, message)
        for connection_index, channel_redis_keys in connection_to_channel_keys.items():
            connection = self.connection(connection_index)
            args = [channel_keys_to_message[k] for k in channel_redis_keys]
            args += [channel_keys_to_capacity[k] for k in channel_redis_keys]
            args += [time.time(), self.expiry, int(time.time()) - int(self.expiry)]
            over_capacity = await connection.eval(
                GROUP_SEND_LUA, len(channel_redis_keys), *channel_redis_keys, *args
            )
            self._count_over_capacity(over_capacity, group)

    @staticmethod
    def _count_over_capacity(over_capacity: int, group: str) -> None:
        if over_capacity:
            metrics.OVER_CAPACITY.inc(over_capacity)
            logger.warning("%s channel keys over capacity in group %s", over_capacity, group)


# One group send, done where the group lives. KEYS[1]: the group. ARGV: random prefix, message
# packed up to the `__asgi_channel__` value, channel key prefix, now, message expiry, trim
# messages before, trim memberships before, capacity. The inbox keys are derived from the
# members as channels_redis does (a process-local channel's inbox ends at its "!"), so they
# are not declared in KEYS: fine on one Redis, as channels_redis never supported Cluster.
GROUP_SEND_IN_REDIS_LUA = """
    redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[7])
    local members = redis.call('ZRANGE', KEYS[1], 0, -1)
    local channels_of, inboxes = {}, {}
    for _, channel in ipairs(members) do
        local bang = string.find(channel, '!', 1, true)
        local inbox = ARGV[3] .. (bang and string.sub(channel, 1, bang) or channel)
        local channels = channels_of[inbox]
        if channels == nil then
            channels = {}
            channels_of[inbox] = channels
            inboxes[#inboxes + 1] = inbox
        end
        channels[#channels + 1] = channel
    end
    local over_capacity = 0
    local capacity = tonumber(ARGV[8])
    for _, inbox in ipairs(inboxes) do
        redis.call('ZREMRANGEBYSCORE', inbox, 0, ARGV[6])
        if redis.call('ZCARD', inbox) < capacity then
            local body = ARGV[1] .. ARGV[2] .. cmsgpack.pack(channels_of[inbox])
            redis.call('ZADD', inbox, ARGV[4], body)
            redis.call('EXPIRE', inbox, ARGV[5])
        else
            over_capacity = over_capacity + 1
        end
    end
    return over_capacity
"""

# The stock script, with the expired-message trim folded in so a send is one round trip.
GROUP_SEND_LUA = """
    local over_capacity = 0
    local current_time = ARGV[#ARGV - 2]
    local expiry = ARGV[#ARGV - 1]
    local trim_before = ARGV[#ARGV]
    for i=1,#KEYS do
        redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, trim_before)
        if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
            redis.call('ZADD', KEYS[i], current_time, ARGV[i])
            redis.call('EXPIRE', KEYS[i], expiry)
        else
            over_capacity = over_capacity + 1
        end
    end
    return over_capacity
"""
