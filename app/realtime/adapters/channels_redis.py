"""channels_redis's private API and wire format, as the resilient channel layer uses them.

Relied on, from `channels_redis.core.RedisChannelLayer`: `_group_key` (`group_key`),
`_map_channel_keys_to_connection` (`map_channel_keys`), `_serializer` with its `crypter`,
`random_prefix_length` and `as_bytes` (`encrypted`, `group_body`); and its wire format: a
process's inbox key `{prefix}specific.{client_prefix}!` (`inbox_key`), a body of a random
prefix then the msgpack'd message whose `__asgi_channel__`, packed last, lists the inbox's
channels (`group_body`). The layer's GROUP_SEND_IN_REDIS_LUA writes that format, and its
mapped group send copies `group_send`.
"""

import random

PACKAGE = "channels_redis"
# Exact: the layer copies group_send and writes the wire format itself, so even a patch
# release's fix to either must be read before it is taken.
SUPPORTED = "==4.3.0"


def group_key(layer, group: str) -> str:
    """The Redis key of a group's sorted set of members."""
    return layer._group_key(group)


def map_channel_keys(layer, channel_names: list[str], message: dict):
    """channels_redis's (inboxes by connection, body by inbox, capacity by inbox) for a send."""
    return layer._map_channel_keys_to_connection(channel_names, message)


def encrypted(layer) -> bool:
    """Whether message bodies are encrypted (only Python can build those)."""
    return bool(layer._serializer.crypter)


def inbox_key(layer) -> str:
    """The Redis key holding every message for the process-local channels of this layer."""
    return f"{layer.prefix}specific.{layer.client_prefix}!"


def group_body(layer, message: dict) -> tuple[bytes, bytes]:
    """(random prefix, message packed up to its `__asgi_channel__` value) of a group send.

    A body is the two, then the msgpack of the inbox's channel list: byte for byte what
    channels_redis writes, with `__asgi_channel__` packed last.
    """
    serializer = layer._serializer
    packed = serializer.as_bytes({**message, "__asgi_channel__": None})
    length = serializer.random_prefix_length
    token = random.getrandbits(8 * length).to_bytes(length, "big") if length else b""
    # The packed None (one byte) is the value the script fills in.
    return token, packed[:-1]
