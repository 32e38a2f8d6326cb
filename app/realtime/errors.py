"""The error every layer of the app raises for a client request the protocol refuses."""


class ProtocolError(Exception):
    """A client request answered with the protocol's error frame; `code` is documented."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(message)
        self.code = code
        self.extra = extra
