"""The error every layer of the app raises for a client request the protocol refuses."""


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
