"""Which database errors mean "unreachable, retry" (`database_unavailable`) and which are bugs."""

import sqlite3

import pytest
from django.db import IntegrityError, InterfaceError, OperationalError, connection
from django.db.utils import ConnectionHandler

from app.realtime.consumers.errors import (
    DATABASE_RETRY_AFTER,
    database_unavailable,
    database_unreachable,
)
from deploy.processes.children import free_port


def refused_connection_error() -> OperationalError:
    """The error Django raises when nothing listens on PostgreSQL's port (a stopped server)."""
    handler = ConnectionHandler({"default": {
        "ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": free_port(),
        "NAME": "absent", "USER": "postgres", "OPTIONS": {"connect_timeout": 2},
    }})
    try:
        handler["default"].ensure_connection()
    except OperationalError as error:
        return error
    finally:
        handler.close_all()
    raise AssertionError("a closed port accepted a PostgreSQL connection")


@pytest.mark.django_db  # pytest-django refuses any connection attempt without it
def test_a_refused_postgresql_connection_is_unreachable():
    """A stopped server: Django's OperationalError around psycopg's, without an SQLSTATE."""
    error = refused_connection_error()
    assert error.__cause__ is not None and getattr(error.__cause__, "sqlstate", None) is None
    assert database_unreachable(error)


def test_a_closed_connection_is_unreachable():
    """Django's InterfaceError ("connection already closed") means the server went away."""
    assert database_unreachable(InterfaceError("connection already closed"))


def test_a_busy_sqlite_database_is_unreachable(tmp_path):
    """SQLite's lock timeout is retryable too (its cause is sqlite3's OperationalError)."""
    path = tmp_path / "locked.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, timeout=0)
    try:
        holder.execute("CREATE TABLE t (n int)")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("SELECT * FROM t")
    finally:
        holder.close()
        waiter.close()
    wrapped = OperationalError(*caught.value.args)
    wrapped.__cause__ = caught.value
    assert database_unreachable(wrapped)


@pytest.mark.django_db
def test_a_bad_query_is_a_bug_not_an_outage():
    """An unknown table (SQLite: OperationalError, PostgreSQL: ProgrammingError) is a bug."""
    with pytest.raises(Exception) as caught, connection.cursor() as cursor:
        cursor.execute("SELECT * FROM chanfleet_no_such_table")
    assert not database_unreachable(caught.value)


def test_a_constraint_violation_and_other_errors_are_not_unreachable():
    """Only connection-class errors are retryable; an IntegrityError is the request's fault."""
    assert not database_unreachable(IntegrityError("duplicate key"))
    assert not database_unreachable(ValueError("not a database error"))
    assert not database_unreachable(OperationalError("no cause: not raised by a driver"))


def test_the_answer_is_the_documented_retryable_error():
    """database_unavailable carries its code and the suggested wait."""
    error = database_unavailable()
    assert error.code == "database_unavailable"
    assert error.extra == {"retry_after": DATABASE_RETRY_AFTER}
