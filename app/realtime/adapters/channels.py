"""channels' private API, as the consumer base (app/realtime/consumers/base.py) uses it.

Relied on: `channels.consumer.get_handler_name`, channels' rule naming a message's handler
(`handler_name`); the attributes `AsyncConsumer.__call__` sets before its receive loop
(`scope`, `channel_layer`, `channel_name`, `base_send`), for a consumer that runs its own
loop (`attach`); and that `AsyncConsumer.dispatch` does nothing but close old database
connections (since 4.2) and call that handler, which the consumer base skips for handlers
that never touch the database.
"""

from channels.consumer import get_handler_name

PACKAGE = "channels"
# Minor releases change the consumer's internals (4.2 added the hop to dispatch).
SUPPORTED = ">=4.3,<4.4"

handler_name = get_handler_name


def attach(consumer, scope, send, layer, channel_name: str) -> None:
    """Give a consumer what channels' `__call__` gives it, without channels' receive loop."""
    consumer.scope = scope
    consumer.channel_layer = layer
    consumer.channel_name = channel_name
    consumer.base_send = send
