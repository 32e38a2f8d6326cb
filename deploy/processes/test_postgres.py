"""A real PostgreSQL of the test's own: started, stopped, restarted and frozen by PID."""

import os
import subprocess
import time

import psycopg
import pytest

from deploy.processes import postgres
from deploy.processes.postgres import PostgresBinaryMissing, PostgresServer, find_bindir

try:
    find_bindir()
except PostgresBinaryMissing as missing:
    pytestmark = pytest.mark.skip(reason=str(missing))


@pytest.fixture(scope="module")
def server():
    """One server for the module (initdb is the slow part); each test leaves it running."""
    with PostgresServer(database="harness") as started:
        yield started


def count_rows(server: PostgresServer) -> int:
    """Rows of the test table, through a fresh connection."""
    with server.connect() as connection:
        return connection.execute("SELECT count(*) FROM kept").fetchone()[0]


def test_the_server_answers_on_loopback_as_postgres_with_its_own_database(server):
    """The URL names 127.0.0.1, the port and the database, and trust auth lets `postgres` in."""
    assert server.url == f"postgres://postgres@127.0.0.1:{server.port}/harness"
    with server.connect() as connection:
        user, database, address = connection.execute(
            "SELECT current_user, current_database(), inet_server_addr()::text").fetchone()
    assert (user, database, address) == ("postgres", "harness", "127.0.0.1/32")
    if os.geteuid() == 0:
        owner = subprocess.run(["ps", "-o", "user=", "-p", str(server.pid)],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert owner == "postgres"


def test_a_fast_shutdown_cuts_connections_and_a_restart_keeps_the_data_and_port(server):
    """shutdown('fast') ends open sessions at once; start() again serves the same rows."""
    with server.connect(autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS kept (n int)")
        connection.execute("INSERT INTO kept VALUES (1), (2)")
    before = count_rows(server)
    port = server.port
    held = server.connect()
    took = server.shutdown("fast")
    assert took < 10 and server.pid is None
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    with pytest.raises(psycopg.OperationalError):
        server.connect(connect_timeout=2)
    server.start()
    assert server.port == port
    assert count_rows(server) == before


def test_a_frozen_server_hangs_clients_until_it_is_thawed(server):
    """freeze() stops the postmaster and backends: a query waits, then completes after thaw()."""
    connection = server.connect(autocommit=True)
    stopped = server.freeze()
    try:
        assert server.pid in stopped and len(stopped) > 1  # the backends too
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            server.connect(connect_timeout=1)
        assert time.monotonic() - started >= 0.9  # a timeout, not a refusal
    finally:
        server.thaw()
    assert connection.execute("SELECT 1").fetchone() == (1,)
    connection.close()


def test_stop_removes_the_temporary_directory_and_the_process():
    """A server of its own: after stop(), no process and no data directory are left."""
    server = PostgresServer().start()
    pid, data = server.pid, server.data_dir
    assert data.joinpath("PG_VERSION").exists()
    server.stop()
    assert not data.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_bin_directory_comes_from_the_environment_first(tmp_path, monkeypatch):
    """$CHANFLEET_PG_BIN wins when it holds initdb and postgres; an empty one is passed over."""
    for name in ("initdb", "postgres"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    monkeypatch.setenv(postgres.PG_BIN_ENV, str(tmp_path))
    assert find_bindir() == tmp_path
    (tmp_path / "postgres").unlink()
    assert find_bindir() != tmp_path


def test_the_process_tree_lists_a_child_after_its_parent():
    """process_tree() follows parent PIDs in /proc."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        tree = postgres.process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
    finally:
        child.kill()
        child.wait()
