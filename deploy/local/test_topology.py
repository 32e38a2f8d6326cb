"""Unit checks of the local topology's helpers (the whole topology runs in tests/)."""

import pytest

from deploy.local.topology import database_url_named


def test_a_topology_database_keeps_the_servers_connection_options():
    """Only the database name changes; credentials, host, port and query parameters stay."""
    url = "postgres://app:s%40cret@db.internal:6432/chanfleet?sslmode=require&options=-c%20x%3D1"
    assert database_url_named(url, "chanfleet_ab12") == (
        "postgres://app:s%40cret@db.internal:6432/chanfleet_ab12"
        "?sslmode=require&options=-c%20x%3D1")


def test_a_url_without_options_gets_the_name_as_its_path():
    """The plain local URL of CI and make test."""
    assert database_url_named("postgres://postgres@127.0.0.1:5432/test", "chanfleet_x") == (
        "postgres://postgres@127.0.0.1:5432/chanfleet_x")


def test_waiting_for_a_new_master_returns_it_or_shows_the_sentinels_logs(tmp_path, monkeypatch):
    """The master the sentinels name next; on timeout, the elections from their logs."""
    from deploy.local.topology import Topology

    top = Topology(tmp_path, monitoring=False)
    old, new = ("127.0.0.1", 6380), ("127.0.0.1", 6381)
    answers = iter([old, RuntimeError("no sentinel answered"), old, new])

    def redis_master(shard: int = 0):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(top, "redis_master", redis_master)
    assert top.wait_new_master(old, 5) == new

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sentinel-2.log").write_text(
        "# -failover-abort-not-elected master chanfleet 127.0.0.1 6380\n")
    monkeypatch.setattr(top, "redis_master", lambda shard=0: old)
    with pytest.raises(RuntimeError) as raised:
        top.wait_new_master(old, 0.3)
    assert "within 0.3 s" in str(raised.value)
    assert "--- sentinel-2\n# -failover-abort-not-elected" in str(raised.value)
