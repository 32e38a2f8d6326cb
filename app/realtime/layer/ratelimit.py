"""Fixed-window rate limits shared by every process through the store."""

import time
from dataclasses import dataclass

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
    """Count one event for key; return whether it is allowed and seconds until the window ends."""
    count = await get_store().hit(key, rate.seconds)
    retry_after = rate.seconds - (time.time() % rate.seconds)
    return count <= rate.count, round(retry_after, 3)
