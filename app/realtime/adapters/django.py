"""Django's private API, as the WebSocket handshake and the consumer base use it.

Relied on: `LazyObject._wrapped` and `django.utils.functional.empty` (`unwrap_lazy`), and a
session store's `_session_cache`, where it keeps the loaded session data (`drop_session_data`,
`set_session_data`).
"""

from django.utils.functional import empty

PACKAGE = "Django"
# The LTS series; its patch releases do not touch these internals.
SUPPORTED = ">=5.2,<5.3"


def unwrap_lazy(value):
    """The object behind a resolved LazyObject (channels' scope user), else the value itself.

    Every attribute access through the proxy costs a Python call; fan-out handlers read
    `user.pk` once per delivered event.
    """
    wrapped = getattr(value, "_wrapped", None)
    return value if wrapped is None or wrapped is empty else wrapped


def drop_session_data(session) -> None:
    """Forget a session store's loaded data; it is loaded again should anything read it."""
    session.__dict__.pop("_session_cache", None)


def set_session_data(session, data: dict) -> None:
    """Give a session store its data, read elsewhere, as if it had loaded it itself."""
    session._session_cache = data
