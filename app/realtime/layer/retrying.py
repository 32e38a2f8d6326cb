"""Riding out a Redis Sentinel failover: one retry loop, short jittered steps, a deadline.

redis-py's retries, as this project had them, made a failover slower to ride out than it is.
The store's policy (exponential back-off capped at 1 s, for each reconnect as well as each
command) put the attempts after a promotion up to a whole second apart. And every sentinel
client kept redis-py's default policy: a refused or timed-out query to one sentinel was
retried three times with jittered sleeps of up to 2, 4 and 8 s before discover_master asked
the next sentinel, so a layer whose first sentinel was down waited seconds for its first send.
So the store and the channel layer make clients that never retry on their own and retry here,
every 50-250 ms until the new master answers, for a bounded time.
"""

import asyncio
import random
import time

from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Errors that mean "the master is gone or changing", as seen through Sentinel.
TRANSIENT_ERRORS = (
    redis_errors.ConnectionError,  # includes MasterNotFoundError
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a demoted master still answering reads
    redis_errors.BusyLoadingError,
    OSError,
)

FIRST_STEP = 0.05


def no_retry() -> Retry:
    """A redis-py retry policy that never retries (the caller's loop does)."""
    return Retry(NoBackoff(), 0)


def sentinel_kwargs(given: dict | None) -> dict:
    """Connection options for sentinel clients: one quick try each, so the next is asked.

    discover_master already moves on to the next sentinel when one fails; a retry inside the
    sentinel client would only hold the whole lookup in its back-off sleeps.
    """
    return {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **(given or {}),
            "retry": no_retry()}


def backoff_steps(backoff_max: float = 0.25):
    """Sleeps between attempts: 50 ms doubling to `backoff_max`, each jittered by +-50%.

    The jitter keeps a process's callers (and the processes) from reconnecting in lockstep.
    """
    delay = FIRST_STEP
    while True:
        yield delay * (0.5 + random.random())
        delay = min(delay * 2, backoff_max)


async def retry_transient(operation, *args, seconds: float, backoff_max: float = 0.25,
                          on_retry=None, after_sleep=None):
    """Await operation(*args), retrying transient Redis errors until `seconds` have passed.

    Between attempts it sleeps the `backoff_steps`, the last one cut short so that a final
    attempt comes at the deadline. `on_retry(error)` runs before each sleep and the coroutine
    function `after_sleep()` after it. An error past the deadline is re-raised.
    """
    deadline = time.monotonic() + seconds
    steps = backoff_steps(backoff_max)
    while True:
        try:
            return await operation(*args)
        except TRANSIENT_ERRORS as error:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if on_retry is not None:
                on_retry(error)
            await asyncio.sleep(min(next(steps), left))
            if after_sleep is not None:
                await after_sleep()
