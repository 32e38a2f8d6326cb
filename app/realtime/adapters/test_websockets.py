"""websockets' server protocol as the lingering close needs it, driven without sockets."""

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app.realtime.adapters.websockets import oversized_frame_rest, refusal_aware


def connected(max_size: int) -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a refusal-aware server protocol, past the opening handshake."""
    client = ClientProtocol(parse_uri("ws://example.com/"))
    server = refusal_aware(ServerProtocol(max_size=max_size))
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    return client, server


def test_the_copy_keeps_the_configuration():
    """The refusal-aware protocol refuses what the one it replaces would have."""
    server = refusal_aware(ServerProtocol(max_size=123))
    assert (server.max_message_size, server.max_fragment_size) == (123, None)


def test_a_refused_frame_read_in_one_piece_leaves_only_what_follows_it():
    """Bytes read past the refused frame (the client's close) are handed to the linger."""
    client, server = connected(max_size=100)
    client.send_text(b"x" * 1000)
    refused = b"".join(client.data_to_send())
    client.send_close()
    after = b"".join(client.data_to_send())
    server.receive_data(refused + after)
    assert server.close_sent.code == 1009
    assert oversized_frame_rest(server) == (0, after)


def test_a_refused_frame_arriving_in_pieces_reports_what_is_still_to_come():
    """A refusal right after the frame's length: mask and payload are still on their way."""
    client, server = connected(max_size=100)
    client.send_text(b"x" * 100_000)
    refused = b"".join(client.data_to_send())
    server.receive_data(refused[:5000])
    assert server.close_sent.code == 1009
    assert oversized_frame_rest(server) == (len(refused) - 5000, b"")


def test_other_failures_are_not_refusals():
    """A protocol error (here an unmasked client frame) is left to uvicorn's own handling."""
    _, server = connected(max_size=100)
    server.receive_data(bytes([0x80 | Opcode.TEXT, 1]) + b"x")
    assert server.close_sent.code == 1002
    assert oversized_frame_rest(server) is None
