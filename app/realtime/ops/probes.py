"""The `/readyz` checks of the shared dependencies, each answered within TIMEOUT seconds.

A readiness probe that hangs is a failed probe: the kubelet gives up after its timeoutSeconds
whatever the body would have said. The database check used to run in the request's own
database thread, which Django's middleware also runs in: on a database that hangs instead of
refusing (a frozen server, a network black hole) the check's timeout freed the view, but the
response then waited in the middleware behind the hung query, and `/readyz` never answered.
So the database is checked on a connection of the check's own, opened and closed in a thread
of the check's own, one check at a time: while one still waits, the next answers False at once.
"""

import asyncio
import concurrent.futures

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend

from app.realtime.layer.store import get_store

TIMEOUT = 3.0

_database_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="readyz-db")
_pending: concurrent.futures.Future | None = None


def database_select_one() -> bool:
    """Open a new connection to the default database, run SELECT 1, close it."""
    settings_dict = connections.settings[DEFAULT_DB_ALIAS]
    if "postgresql" in settings_dict["ENGINE"]:
        # libpq's own limit on connecting (a frozen server accepts TCP, then never answers).
        options = {**settings_dict.get("OPTIONS", {}), "connect_timeout": int(TIMEOUT)}
        settings_dict = {**settings_dict, "OPTIONS": options}
    probe = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, DEFAULT_DB_ALIAS)
    try:
        with probe.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    finally:
        probe.close()


async def passes(check) -> bool:
    """Whether an awaitable check returns truthy within TIMEOUT (any error: False)."""
    try:
        return bool(await asyncio.wait_for(check, TIMEOUT))
    except Exception:
        return False


async def database() -> bool:
    """Whether the database answers a new connection's SELECT 1 within TIMEOUT."""
    global _pending
    if _pending is not None and not _pending.done():
        return False  # the previous check still waits for the database
    _pending = _database_thread.submit(database_select_one)
    return await passes(asyncio.shield(asyncio.wrap_future(_pending)))


async def redis() -> bool:
    """Whether Redis (the store: presence, rate limits) answers PING within TIMEOUT."""
    return await passes(get_store().ping())
