"""Group commit: the chat changes a process has waiting share one database transaction.

Every stored chat change (a message, edit, delete or reaction) commits with its room event
before it is broadcast (app/chat/services.py). One at a time, each paid a hop to the database
thread and a commit of its own, and when several arrived together (the tail of a busy room)
each waited for all the commits before it. Here the changes that arrive while a batch is being
written wait together and are written as the next batch: one hop and one commit (on
PostgreSQL, one fsync) for all of them. A batch of one is written exactly as before.

Each change of a batch still runs in its own `transaction.atomic()` block, a savepoint inside
the batch's transaction, so a change that fails (a reply to a message of another room, a
database error) is rolled back alone and its sender gets the error; the others commit. If the
commit itself fails, nothing of the batch is stored and every sender gets that error.

A batch takes its rooms' row locks (each change raises its room's `last_seq`) in ascending
room order, and holds them to the commit. Two processes whose batches touch the same rooms
in different orders would otherwise deadlock, and PostgreSQL would refuse one of the changes.
Changes of one room keep their arrival order, which is their order of seq.

While the database cannot be reached every change fails at once, and its sender is answered
`database_unavailable` (app/realtime/consumers/base.py): nothing waits here for the database
to come back, and the next batch after it is back reconnects. A connection lost during the
commit itself leaves the outcome unknown to the server; docs/protocol.md tells clients how such
a change, if it was stored, still reaches them.
"""

import asyncio
import logging
import weakref

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from app.realtime.layer.store import get_store
from app.realtime.ops import metrics

logger = logging.getLogger(__name__)


def write_batch(changes: list[tuple]) -> list[tuple[bool, object]]:
    """Run (function, args) changes in one transaction; (True, result) or (False, error) each."""
    if len(changes) == 1:
        change, args = changes[0]
        try:
            return [(True, change(*args))]
        except Exception as error:
            return [(False, error)]
    results: list[tuple[bool, object] | None] = [None] * len(changes)
    try:
        with transaction.atomic():
            for i in sorted(range(len(changes)), key=lambda i: _room_id(changes[i])):
                change, args = changes[i]
                try:
                    results[i] = (True, change(*args))  # its own atomic(): a savepoint
                except Exception as error:
                    results[i] = (False, error)
    except Exception as error:
        return [(False, error)] * len(changes)
    return results


def _room_id(change: tuple) -> int:
    """The id of the room a change locks (its first argument), for the batch's lock order."""
    _, args = change
    return getattr(args[0], "id", 0) if args else 0


async def record_positions(batch: list[tuple], results: list[tuple[bool, object]]) -> None:
    """Raise the rooms' positions recorded in Redis to the seqs this batch committed.

    A resume at the recorded position is answered without reading the database
    (ChatConsumer.send_replay). Done before the broadcasts, so a client rarely knows a seq
    the record does not; a raise that fails is only a slower resume, never a lost event.
    """
    positions: dict[int, int] = {}
    for (_, args, _), (ok, value) in zip(batch, results, strict=True):
        if ok and isinstance(value, dict) and "seq" in value:
            room_id = args[0].id  # every change takes the room first
            positions[room_id] = max(value["seq"], positions.get(room_id, 0))
    if not positions:
        return
    try:
        await get_store().raise_room_positions(positions, settings.ROOM_POSITION_TTL)
    except Exception:
        logger.warning("room positions not recorded in Redis", exc_info=True)


class Writer:
    """The process's queue of chat changes waiting for the database, written in batches."""

    def __init__(self):
        self.waiting: list[tuple] = []
        self.task: asyncio.Task | None = None

    async def write(self, change, *args):
        """Run `change(*args)` in the next batch's transaction; return its result or raise."""
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((change, args, done))
        if self.task is None:
            self.task = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            await self._write_batches()
        finally:
            self.task = None  # a finished task would keep the loop, this writer's key, alive

    async def _write_batches(self) -> None:
        # Everything that arrives while a batch is in the database thread forms the next one.
        while self.waiting:
            batch, self.waiting = self.waiting, []
            metrics.WRITE_BATCH.observe(len(batch))
            try:
                results = await database_sync_to_async(write_batch)(
                    [(change, args) for change, args, _ in batch])
            except asyncio.CancelledError:
                for *_, done in batch + self.waiting:  # shutdown: nobody may wait forever
                    done.cancel()
                raise
            except Exception as error:
                results = [(False, error)] * len(batch)
            await record_positions(batch, results)
            for (*_, done), (ok, value) in zip(batch, results, strict=True):
                if done.done():
                    continue  # the sender's task was cancelled (its socket closed)
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)


# One writer per event loop: a server runs one loop, tests run one per test.
_writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Writer]" = (
    weakref.WeakKeyDictionary())


def writer() -> Writer:
    """The running event loop's writer."""
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        found = _writers[loop] = Writer()
    return found
