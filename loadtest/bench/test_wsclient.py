"""The load generator's WebSocket client, against a real `websockets` server on loopback."""

from __future__ import annotations

import asyncio
import http

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus
from websockets.uri import parse_uri

from loadtest.bench import wsclient
from loadtest.bench.wsclient import Client


async def _server(handler, **kwargs):
    server = await serve(handler, "127.0.0.1", 0, **kwargs)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/ws/chat/room/"


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def test_messages_go_both_ways_headers_arrive_and_large_or_fragmented_ones_come_whole():
    seen = {}
    big = "y" * 200_000

    async def handler(ws):
        seen["cookie"] = ws.request.headers.get("Cookie")
        seen["offer"] = ws.request.headers.get("Sec-WebSocket-Extensions")
        async for message in ws:
            await ws.send(f"echo {message}")
            await ws.send(big)
            await ws.send(["frag", "ment", "ed"])  # one message in three frames
            await ws.send(b"\x00\x01")

    async def main():
        server, url = await _server(handler, compression=None)
        got = []
        done = asyncio.get_running_loop().create_future()

        def on_message(client, message):
            got.append(message)
            if len(got) == 4:
                done.set_result(None)

        client = await Client.connect(url, [("Cookie", "sessionid=abc")], 5,
                                      on_message=on_message)
        assert client.send_text("hello é")
        await done
        await client.aclose()
        server.close()
        return got, client

    got, client = _run(main())
    assert got == ["echo hello é", big, "fragmented", b"\x00\x01"]
    assert seen["cookie"] == "sessionid=abc"
    assert "permessage-deflate" in seen["offer"]
    assert client.close_code == 1000 and not client.open


def test_a_server_that_accepts_deflate_is_inflated_message_after_message():
    texts = [f'{{"type":"message","message":"bench|c|{i}|1.0"}}' * 20 for i in range(5)]

    async def handler(ws):
        for text in texts:
            await ws.send(text)
        await ws.wait_closed()

    async def main():
        server, url = await _server(handler, compression="deflate")
        got = []
        done = asyncio.get_running_loop().create_future()

        def on_message(client, message):
            got.append(message)
            if len(got) == len(texts):
                done.set_result(None)

        client = await Client.connect(url, [], 5, on_message=on_message)
        await done
        await client.aclose()
        server.close()
        return got

    assert _run(main()) == texts


def test_the_servers_close_code_is_reported_once_and_pings_are_answered():
    closes = []

    async def handler(ws):
        await asyncio.wait_for(await ws.ping(), 5)  # waits for the client's pong
        await ws.close(4001, "unauthenticated")

    async def main():
        server, url = await _server(handler, compression=None)
        client = await Client.connect(url, [], 5, on_close=closes.append)
        await asyncio.wait_for(asyncio.shield(client.closed), 5)
        server.close()
        return client

    client = _run(main())
    assert closes == [4001]
    assert not client.send_text("too late")


def test_a_refused_upgrade_raises_with_the_http_status():
    def refuse(connection, request):
        return connection.respond(http.HTTPStatus.FORBIDDEN, "no\n")

    async def main():
        server, url = await _server(lambda ws: None, process_request=refuse)
        try:
            with pytest.raises(InvalidStatus) as failed:
                await Client.connect(url, [], 5)
        finally:
            server.close()
        return failed.value

    assert _run(main()).response.status_code == 403


def test_a_message_that_comes_with_the_handshake_can_be_answered_at_once():
    async def handler(ws):
        await ws.send("ping me")  # often in the same read as the 101 answer
        await ws.send(f"you said {await ws.recv()}")
        await ws.wait_closed()

    async def main():
        server, url = await _server(handler, compression=None)
        done = asyncio.get_running_loop().create_future()

        def on_message(client, message):
            if message == "ping me":
                client.send_text("pong")
            else:
                done.set_result(message)

        client = await Client.connect(url, [], 5, on_message=on_message)
        answer = await done
        await client.aclose()
        server.close()
        return answer

    assert _run(main()) == "you said pong"


def test_nothing_reaches_the_caller_from_a_handshake_it_gave_up_on():
    """The answer and messages arriving after `connect` timed out are dropped with the socket.

    A storm drill's client that timed out counted such messages and resumed from a position it
    had not been sent the events up to.
    """
    import base64
    import hashlib

    from websockets.client import ClientProtocol

    class Transport:
        aborted = False

        def write(self, data):
            pass

        def abort(self):
            self.aborted = True

    async def main():
        protocol = ClientProtocol(parse_uri("ws://127.0.0.1:1/ws/chat/room/"))
        request = protocol.connect()
        protocol.send_request(request)
        got = []
        client = Client(protocol, on_message=lambda c, message: got.append(message))
        client.transport = Transport()
        client.handshake.cancel()  # connect's timeout
        key = request.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        answer = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode()
        frame = b"\x81\x05hello"  # an unmasked text frame from the server
        client.data_received(answer + frame)
        client.data_received(frame)
        return got, client.transport.aborted

    got, aborted = _run(main())
    assert got == [] and aborted


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8000/ws/chat/r1/?last_seq=5",
                                 "ws://127.0.0.1:8000/ws/chat/r1/", "wss://h/a?b=1&c=2",
                                 "ws://user:pw@h:1/a?", "ws://127.0.0.1:8000/ws/chat/r1/?last_seq=6"])
def test_urls_parse_as_websockets_parses_them(url):
    """The base of a URL is parsed once; each query is its own."""
    assert wsclient._parsed(url) == parse_uri(url)
