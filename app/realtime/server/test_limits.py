"""The slow-client rule and the lingering close read their bounds from the environment."""

import pytest

from app.realtime.server.limits import SocketLimits


def test_defaults_keep_asyncio_high_water_mark_and_nginx_lingering_timeout():
    """Unset, the send buffer limit is asyncio's own: writes wait exactly when they did."""
    assert SocketLimits.from_environ({}) == SocketLimits(
        send_buffer_bytes=64 * 1024, slow_client_seconds=10.0, linger_seconds=5.0,
        linger_bytes=64 * 1024 * 1024)


def test_every_bound_is_set_by_its_variable():
    """WS_SEND_BUFFER_BYTES, WS_SLOW_CLIENT_SECONDS, WS_CLOSE_LINGER_SECONDS and _BYTES."""
    limits = SocketLimits.from_environ({
        "WS_SEND_BUFFER_BYTES": "1000", "WS_SLOW_CLIENT_SECONDS": "2.5",
        "WS_CLOSE_LINGER_SECONDS": "1", "WS_CLOSE_LINGER_BYTES": "5000"})
    assert limits == SocketLimits(1000, 2.5, 1.0, 5000)


@pytest.mark.parametrize("name", ["WS_SEND_BUFFER_BYTES", "WS_SLOW_CLIENT_SECONDS",
                                  "WS_CLOSE_LINGER_SECONDS", "WS_CLOSE_LINGER_BYTES"])
def test_a_bound_of_zero_is_refused_at_startup(name):
    """Zero would close every socket at its first burst, or never linger: a typo, not a choice."""
    with pytest.raises(ValueError, match="must be positive"):
        SocketLimits.from_environ({name: "0"})
