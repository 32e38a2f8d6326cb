"""Unit checks of the local topology's helpers (the whole topology runs in tests/)."""

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
