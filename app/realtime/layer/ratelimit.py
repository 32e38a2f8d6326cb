"""Fixed-window rate limits shared by every process through the store."""

import time
from dataclasses import dataclass

from redis.exceptions import OutOfMemoryError

from app.realtime.layer.store import get_store


@dataclass(frozen=True)
class Rate:
    """A limit of `count` events per `seconds`."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> "Rate":
        """Parse "count/seconds", for example "20/10"."""
        count, _, seconds = text.partition("/")
        return cls(int(count), float(seconds or 1))


async def allow(key: str, rate: Rate) -> tuple[bool, float]:
    """Count one event for key; return whether it is allowed and seconds until the window ends.

    A full Redis (OOM, maxmemory reached) cannot count, and the event is let through: a chat
    change is then still stored and reaches the room by gap fill, where refusing it would
    stop the whole chat for as long as Redis stays full. The store counts the refusal, and
    each connection's own frame limit (WS_FRAME_RATE) still bounds what one client sends.
    """
    try:
        count = await get_store().hit(key, rate.seconds)
    except OutOfMemoryError:
        return True, 0.0
    retry_after = rate.seconds - (time.time() % rate.seconds)
    return count <= rate.count, round(retry_after, 3)
