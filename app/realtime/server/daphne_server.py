"""The WebSocket process under daphne (`WS_SERVER=daphne`): what the application adds for it.

daphne is started by its own command line (deploy/entrypoint.sh) and serves app/asgi.py's
application through its public interface; `wrap` is applied there when daphne is the server.
Its consumers run channels' own receive loop and ASGI `send`: daphne offers no DirectSocket
(app/realtime/consumers/delivery.py). The largest client message is daphne's own
`--websocket-max-message-size`, which deploy/entrypoint.sh sets from WS_MAX_SIZE.
"""

import os
import sys


def served_by_daphne() -> bool:
    """Whether this process is daphne's (its server module is loaded before the application)."""
    return "daphne.server" in sys.modules


def wrap(application):
    """The application as daphne should serve it: close codes and limits, forwarded addresses.

    daphne's own --proxy-headers believes any peer; uvicorn's middleware believes only
    FORWARDED_ALLOW_IPS, as the uvicorn and gunicorn servers do. The slow-client rule and the
    lingering close read the same environment as uvicorn's (app/realtime/server/limits.py).
    Imported here: other processes need neither daphne nor Twisted in memory.
    """
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from app.realtime.adapters import daphne as daphne_adapter
    from app.realtime.server.limits import SocketLimits

    daphne_adapter.install(SocketLimits.from_environ())
    return ProxyHeadersMiddleware(
        application, trusted_hosts=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"))
