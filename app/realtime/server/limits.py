"""What a WebSocket process tolerates from one client below the application, from the environment.

Both servers apply the same rules (app/realtime/adapters/uvicorn.py and daphne.py):

* a client that stops reading: once more than `send_buffer_bytes` wait in the process's write
  buffer for its socket, the client has `slow_client_seconds` to read everything waiting for
  it (that buffer and the frames queued behind it); if it has not, it is closed with
  SLOW_CLIENT (4008, docs/protocol.md). Without the rule the frames pile up until the protocol
  ping times out, and, under uvicorn, whoever sent to the socket waited meanwhile;
* after the server's own close frame (a slow client, or 1009 for a message over WS_MAX_SIZE)
  the server keeps reading and discarding for up to `linger_seconds`, and up to `linger_bytes`
  after a 1009, until the client's close frame: closing the TCP connection while the client
  still sends makes the kernel answer with a reset, which can overtake the close frame (RFC
  6455 §7.1.1, nginx's lingering_close).
"""

import dataclasses
import os
from collections.abc import Mapping

# docs/protocol.md, "Close codes": the client read too slowly; it reconnects and resumes.
SLOW_CLIENT = 4008
MESSAGE_TOO_BIG = 1009


@dataclasses.dataclass(frozen=True)
class SocketLimits:
    """The slow-client rule and the lingering close's bounds."""

    # asyncio's own high-water mark: by default the rule changes nothing about when writes wait.
    send_buffer_bytes: int = 64 * 1024
    slow_client_seconds: float = 10.0
    # nginx's lingering_timeout; the byte bound caps what a client can make the server discard.
    linger_seconds: float = 5.0
    linger_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "SocketLimits":
        """The limits set by WS_SEND_BUFFER_BYTES, WS_SLOW_CLIENT_SECONDS, WS_CLOSE_LINGER_*."""
        defaults = cls()
        limits = cls(
            send_buffer_bytes=int(environ.get("WS_SEND_BUFFER_BYTES",
                                              defaults.send_buffer_bytes)),
            slow_client_seconds=float(environ.get("WS_SLOW_CLIENT_SECONDS",
                                                  defaults.slow_client_seconds)),
            linger_seconds=float(environ.get("WS_CLOSE_LINGER_SECONDS",
                                             defaults.linger_seconds)),
            linger_bytes=int(environ.get("WS_CLOSE_LINGER_BYTES", defaults.linger_bytes)),
        )
        if min(limits.send_buffer_bytes, limits.linger_bytes) <= 0 or min(
                limits.slow_client_seconds, limits.linger_seconds) <= 0:
            raise ValueError(f"WebSocket limits must be positive: {limits}")
        return limits
