"""The heartbeat's read of the rooms' latest sequence numbers, bounded in time.

The heartbeat wheel (app/realtime/consumers/registry.py) awaits each slot's beat before it
refreshes presence and group memberships and moves on to the next slot. A database that hangs
(a frozen server, a network black hole) held that read, and with it the whole wheel: no
heartbeats, and presence and memberships expired in Redis while the sockets were fine. So the
read gets TIMEOUT seconds; while an earlier read still waits for the database, no second one
is queued behind it, and the gap check is skipped until the database answers (a skipped check
only delays the delivery of a broadcast Redis lost: the next beat checks again).
"""

import asyncio
import logging
import weakref

from channels.db import database_sync_to_async
from django.db import DatabaseError

from app.realtime.consumers.errors import database_unreachable

from . import services

logger = logging.getLogger(__name__)

TIMEOUT = 3.0

# The read in flight per event loop (a server runs one loop, tests one per test).
_pending: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future]" = (
    weakref.WeakKeyDictionary())


def _retrieve(read: asyncio.Future) -> None:
    # A read given up on may still fail later; fetching its error keeps asyncio from
    # reporting "exception was never retrieved".
    if not read.cancelled():
        read.exception()


async def latest_seqs(room_ids: list[int]) -> dict[int, int] | None:
    """The rooms' latest seqs, or None when the database is unreachable or slower than TIMEOUT."""
    loop = asyncio.get_running_loop()
    pending = _pending.get(loop)
    if pending is not None and not pending.done():
        return None  # the previous read still waits for the database
    read = asyncio.ensure_future(database_sync_to_async(services.latest_seqs)(room_ids))
    read.add_done_callback(_retrieve)
    _pending[loop] = read
    try:
        return await asyncio.wait_for(asyncio.shield(read), TIMEOUT)
    except TimeoutError:
        logger.warning("gap check skipped: the database did not answer in %.0f s", TIMEOUT)
    except DatabaseError as error:
        if not database_unreachable(error):
            raise
        logger.warning("gap check skipped: the database is unreachable: %s", error)
    return None
