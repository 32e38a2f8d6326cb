"""The error every layer of the app raises for a client request the protocol refuses."""

import sqlite3

from django.db import InterfaceError, OperationalError

# The seconds `database_unavailable` suggests waiting before a retry: a database restart or
# failover lasts seconds to a minute, and clients back off from this first wait.
DATABASE_RETRY_AFTER = 2
# SQLSTATE classes and codes of a server that is unreachable, restarting or out of resources:
# 08 connection exception, 53 insufficient resources (too many connections), 57P01-57P03
# admin shutdown, crash shutdown, cannot connect now (starting up or in recovery).
_UNREACHABLE_CLASSES = ("08", "53")
_UNREACHABLE_STATES = ("57P01", "57P02", "57P03")


class ProtocolError(Exception):
    """A client request answered with the protocol's error frame; `code` is documented."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(message)
        self.code = code
        self.extra = extra


def nul_field(data: dict) -> str | None:
    """The first top-level field whose name or value holds a NUL (U+0000) anywhere, or None.

    PostgreSQL cannot store U+0000 in text or jsonb, so such input is refused up front with
    `invalid_field` instead of failing inside the transaction that would store it.
    """
    for name, value in data.items():
        if "\x00" in name or _holds_nul(value):
            return name
    return None


def _holds_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def database_unreachable(error: BaseException) -> bool:
    """Whether a database error means "cannot reach the database now, retry", not a bug.

    Django wraps the driver's error and keeps it as `__cause__`. A PostgreSQL client error
    without an SQLSTATE (connection refused, server closed the connection) or with one of a
    connection failure or shutdown is unreachable; so is SQLite's busy lock. A bad query (an
    unknown table, a constraint) is not: it stays `internal`.
    """
    if isinstance(error, InterfaceError):
        return True  # "connection already closed": the server went away under us
    if not isinstance(error, OperationalError):
        return False
    cause = error.__cause__
    if isinstance(cause, sqlite3.OperationalError):
        return "locked" in str(cause) or "busy" in str(cause)
    state = getattr(cause, "sqlstate", None)
    if state is None:
        return cause is not None and type(cause).__module__.startswith("psycopg")
    return state.startswith(_UNREACHABLE_CLASSES) or state in _UNREACHABLE_STATES


def database_unavailable() -> ProtocolError:
    """The protocol's answer to a change the database could not be reached for."""
    return ProtocolError(
        "database_unavailable",
        "the database is briefly unavailable; nothing was stored, retry",
        retry_after=DATABASE_RETRY_AFTER,
    )
