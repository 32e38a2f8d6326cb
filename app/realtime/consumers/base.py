"""The consumer base every chanfleet route builds on: validation, errors, heartbeat, metrics.

It implements the parts of docs/protocol.md that every route shares: JSON-object frames with a
string `type`, the optional client `id` echoed as `client_id`, the error frame, frame size and
flood limits, `ping`/`pong`, the server heartbeat and the close codes.
"""

import contextlib
import json
import logging
import time

from channels.db import aclose_old_connections
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from app.realtime.adapters import channels as channels_adapter
from app.realtime.adapters import django as django_adapter
from app.realtime.adapters import uvicorn as uvicorn_adapter
from app.realtime.consumers.delivery import QUEUE, RUN, WRITTEN, take_direct_socket
from app.realtime.consumers.errors import (
    ProtocolError,
    database_unavailable,
    database_unreachable,
    nul_field,
)
from app.realtime.consumers.registry import registry
from app.realtime.layer.channel_layer import LayerUnavailable, ResilientRedisChannelLayer
from app.realtime.layer.ratelimit import Rate
from app.realtime.ops import metrics

logger = logging.getLogger(__name__)


class Close:
    """Close codes of docs/protocol.md."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    SERVICE_RESTART = 1012
    INACTIVE = 4000
    UNAUTHENTICATED = 4001
    FORBIDDEN = 4003
    NOT_FOUND = 4004
    RATE_LIMITED = 4029
    UNAVAILABLE = 4503


class FrameBucket:
    """A per-connection token bucket for raw frames, so floods cost no shared state."""

    def __init__(self, rate: Rate):
        self.capacity = float(rate.count)
        self.refill = rate.count / rate.seconds
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# Labelled MESSAGES_SENT counters of the fan-out path, by (route, kind).
_SENT: dict[tuple[str, str], object] = {}

# Group events that only forward pre-serialised text; they never touch the database.
FAST_EVENTS = frozenset({"room.event", "room.notice", "stream.event", "canary.ping"})


def release_headers(scope) -> None:
    """Empty the handshake's header list once the handshake is over; nothing reads it later.

    The list is shared by every copy of the scope (the server's and each middleware's), so
    only emptying it in place frees it.
    """
    headers = scope.get("headers")
    if isinstance(headers, list):
        headers.clear()


class RealtimeConsumer(AsyncWebsocketConsumer):
    """Base consumer: subclasses set `route` and map client types to handlers in `handlers`."""

    route = "unknown"
    handlers: dict[str, str] = {}
    # Client frame types whose handling keeps Django's connection hygiene by itself: every
    # database call goes through channels' database_sync_to_async, which closes old
    # connections in its own thread, or there is none. They skip dispatch's hygiene hop.
    # Handlers using Django's async ORM (asgiref's sync_to_async, no hygiene) stay out.
    hygienic_frames: frozenset[str] = frozenset({"ping", "pong"})
    # Lifecycle events (websocket.connect, websocket.disconnect) whose handlers keep that
    # hygiene by themselves in the same way; a subclass lists those it can vouch for.
    hygienic_events: frozenset[str] = frozenset()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.accepted = False
        self.closing = False
        self.finished = False  # the disconnect cleanup has run (websocket_disconnect)
        self.connected_at = 0.0
        self.last_activity = time.monotonic()
        self.bucket = FrameBucket(Rate.parse(settings.WS_FRAME_RATE))
        self.user = None
        self.busy = 0  # handlers running other than fan-out events
        self.heartbeat_slot = None  # set by the registry (kept here so every instance has it)
        self._send = None  # the server's ASGI send
        self._write = None  # the server's DirectSocket.write_text, if it offers one
        self._hold = contextlib.nullcontext  # its writes_held: the join frames go out as one

    # ------------------------------------------------------------------ dispatch
    async def __call__(self, scope, receive, send):
        """Run the consumer in the server's task, reading frames and channel messages in order.

        channels runs two extra tasks per socket (one waiting on the server, one on the
        layer) and an `asyncio.wait` over both for every message. A server that offers a
        DirectSocket (app/realtime/consumers/delivery.py) has its inbox fed by the layer too,
        so one loop reads both. Elsewhere (daphne, test communicators, other layers) channels'
        own loop runs.
        """
        self._send = send
        socket = take_direct_socket(scope)
        if socket is not None:
            self._write = socket.write_text
            self._hold = socket.writes_held
        layer = get_channel_layer(self.channel_layer_alias)
        try:
            if socket is None or not isinstance(layer, ResilientRedisChannelLayer):
                return await super().__call__(scope, receive, send)
            channels_adapter.attach(self, scope, send, layer, await layer.new_channel())
            layer.adopt_inbox(self.channel_name, socket.inbox)
            try:
                while True:
                    await self.dispatch(await receive())
            except StopConsumer:
                pass
        except Exception:
            # A send to a client that is already gone raises out of a handler (uvicorn's
            # ClientDisconnected, which uvicorn then swallows): the consumer would end without
            # its disconnect, leaving its registration, inbox and memberships behind, still
            # fed every broadcast of its rooms. Its cleanup runs here, as for a lost socket.
            await self.cleanup_after_loss()
            raise

    async def cleanup_after_loss(self) -> None:
        """Run the disconnect cleanup of a consumer that ended without its disconnect event."""
        if self.finished or getattr(self, "channel_name", None) is None:
            return
        try:
            await self.websocket_disconnect({"type": "websocket.disconnect", "code": 1006})
        except StopConsumer:
            pass
        except Exception:
            logger.exception("cleanup of %s after its socket was lost failed", self.channel_name)

    async def dispatch(self, message):
        """Route a message to its handler, skipping the DB hygiene hop where it is not needed."""
        # Since Channels 4.2 every dispatch first runs aclose_old_connections() in a worker
        # thread; on the broadcast hot path that hop costs several times the handler's own
        # work for handlers that never use the database. A chat message paid it too, before
        # its own database thread hop, which closes old connections anyway. Lifecycle events
        # not in `hygienic_events` and client frames not in `hygienic_frames` keep it.
        if message["type"] in FAST_EVENTS:
            await getattr(self, channels_adapter.handler_name(message))(message)
            return
        self.busy += 1
        try:
            if message["type"] in self.hygienic_events:
                await getattr(self, channels_adapter.handler_name(message))(message)
            elif (message["type"] == "websocket.receive"
                    and self._frame_type(message) in self.hygienic_frames):
                await self.websocket_receive(message)
            else:
                await super().dispatch(message)
        finally:
            self.busy -= 1

    def _frame_type(self, message) -> str | None:
        """The type of a client frame as `decode` reads it, or None if it is not valid.

        receive() decodes it again (cheap for a chat frame) rather than this
        keeping the result on the consumer between the two calls.
        """
        try:
            return self.decode(message.get("text"), message.get("bytes"))["type"]
        except ProtocolError:
            return None  # receive() answers with the error

    def take(self, message) -> int:
        """Called by the layer's reader while this consumer waits idle: WRITTEN, RUN or QUEUE.

        Only fan-out events, and only while no other handler of this consumer runs (the
        handshake's join frames, a client frame): others wait their turn in the inbox. A
        stream event is written at once when the server can; other fan-out events have their
        handler run by the reader. Routes with their own fan-out events extend this.
        """
        kind = message["type"]
        if self.busy or kind not in FAST_EVENTS:
            return QUEUE
        if kind == "stream.event" and self.write_frame(message["text"], message["kind"]):
            return WRITTEN
        return RUN

    # ------------------------------------------------------------------ lifecycle
    async def websocket_connect(self, message):
        """Called when a WebSocket connection is opened."""
        self.user = django_adapter.unwrap_lazy(self.scope.get("user"))
        try:
            async with registry.connect_slots():
                with self._hold():
                    await self.connect()
        except (LayerUnavailable, RedisError):
            await self.refuse(Close.UNAVAILABLE, "unavailable")
            return
        except Exception as error:
            if not database_unreachable(error):
                raise
            # The database is restarting or failing over: the same temporary refusal as
            # Redis's, so clients back off and retry instead of reporting a server bug.
            logger.warning("handshake refused, database unreachable: %s", error)
            await self.refuse(Close.UNAVAILABLE, "database_unavailable")
            return
        release_headers(self.scope)
        if self.accepted and not self.closing:
            # Only now does the process heartbeat see the socket: nothing it sends may come
            # before the join frames (history or replay) are complete.
            registry.add(self)
            if registry.draining:
                # The drain began while this handshake ran: its snapshot missed this socket.
                await registry.send_away(self)
                return
            if isinstance(self.channel_layer, ResilientRedisChannelLayer):
                self.channel_layer.register_receiver(self.channel_name, self)

    async def accept(self, subprotocol=None, headers=None):
        """Accept the socket and start counting it."""
        await super().accept(subprotocol, headers)
        self.accepted = True
        self.connected_at = time.monotonic()
        metrics.WS_CONNECTS.labels(self.route).inc()
        metrics.WS_CONNECTIONS.labels(self.route).inc()

    async def close(self, code=None, reason=None):
        """Close the socket from the server side (already done if the client has gone)."""
        self.closing = True
        try:
            await super().close(code=code, reason=reason)
        except uvicorn_adapter.CLIENT_GONE:
            # The client closed first (a page leaves at once on `reconnect`); its disconnect
            # event, already on its way, cleans up.
            logger.debug("close of %s: the client left before its close", self.channel_name)

    async def refuse(self, code: int, reason: str) -> None:
        """Refuse a handshake with a close code (accept first, so the client sees the code)."""
        metrics.WS_REFUSED.labels(self.route, reason).inc()
        if not self.accepted:
            await super().accept()
        await self.close(code=code, reason=reason)

    async def websocket_disconnect(self, message):
        """Called when the socket closes: stop counting it, then run the subclass cleanup."""
        self.finished = True
        code = message.get("code", 1005)
        registry.discard(self)
        if self.accepted:
            metrics.WS_CONNECTIONS.labels(self.route).dec()
            metrics.WS_DISCONNECTS.labels(self.route, str(code)).inc()
            metrics.WS_DURATION.labels(self.route).observe(time.monotonic() - self.connected_at)
        try:
            await self.disconnect(code)
        except (LayerUnavailable, RedisError):
            logger.warning("channel layer unavailable during disconnect of %s", self.channel_name)
        finally:
            if isinstance(self.channel_layer, ResilientRedisChannelLayer):
                self.channel_layer.forget_channel(self.channel_name)
        await aclose_old_connections()
        raise StopConsumer()

    # ------------------------------------------------------------------ receiving
    async def receive(self, text_data=None, bytes_data=None):
        """Validate one client frame and run its handler; errors become error frames."""
        self.last_activity = time.monotonic()
        if not self.bucket.take():
            metrics.MESSAGE_ERRORS.labels(self.route, "flood").inc()
            await self.close(code=Close.POLICY, reason="frame flood")
            return
        client_id = None
        kind = "invalid"
        try:
            data = self.decode(text_data, bytes_data)
            client_id = data.get("id")
            kind = data["type"]
            handler = self.handlers.get(kind)
            if kind == "ping":
                await self.send_frame({"type": "pong", "ts": time.time(), "client_id": client_id})
            elif kind == "pong":
                self.heartbeat_answered(data)
            elif handler is None:
                raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
            else:
                await getattr(self, handler)(data)
            metrics.MESSAGES_RECEIVED.labels(self.route, kind).inc()
        except ProtocolError as error:
            metrics.MESSAGES_RECEIVED.labels(self.route, "invalid").inc()
            await self.send_error(error.code, str(error), client_id, **error.extra)
        except (LayerUnavailable, RedisError):
            # Redis is failing over and retries ran out: nothing was done, the client retries.
            await self.send_error(
                "unavailable", "the message service is briefly unavailable, retry", client_id
            )
        except Exception as error:
            if database_unreachable(error):
                # The database is restarting or failing over: nothing was stored, retry.
                logger.warning("database unreachable for %r: %s", kind, error)
                problem = database_unavailable()
                await self.send_error(problem.code, str(problem), client_id, **problem.extra)
                return
            # A handler bug must cost one error frame, never the connection.
            logger.exception("handler for %r failed", kind)
            await self.send_error("internal", "the server could not process this", client_id)

    def decode(self, text_data, bytes_data) -> dict:
        """Parse a frame into a JSON object with a string `type`, or raise ProtocolError."""
        if text_data is None:
            raise ProtocolError("binary_frame", "binary frames are not supported; send JSON text")
        if len(text_data) > settings.WS_MAX_FRAME_BYTES:
            raise ProtocolError(
                "frame_too_large",
                f"frames are limited to {settings.WS_MAX_FRAME_BYTES} characters",
                limit=settings.WS_MAX_FRAME_BYTES,
            )
        try:
            data = json.loads(text_data)
        except (ValueError, RecursionError):
            raise ProtocolError("invalid_json", "the frame is not valid JSON") from None
        if not isinstance(data, dict):
            raise ProtocolError("not_an_object", "a frame must be a JSON object")
        # JSON text can carry U+0000 only as the escape, so most frames skip the walk.
        if "\\u0000" in text_data:
            name = nul_field(data)
            if name is not None:
                raise ProtocolError("invalid_field", "text may not contain U+0000", field=name)
        client_id = data.get("id")
        if client_id is not None and not (
            (isinstance(client_id, str) and len(client_id) <= 64)
            or (isinstance(client_id, int) and not isinstance(client_id, bool))
        ):
            raise ProtocolError("invalid_field", "id must be a string (64 max) or integer",
                                field="id")
        kind = data.get("type", "message" if "message" in data else None)
        if not isinstance(kind, str):
            raise ProtocolError("invalid_field", "type must be a string", field="type")
        data["type"] = kind
        return data

    # ------------------------------------------------------------------ sending
    async def send_frame(self, frame: dict | str, kind: str | None = None) -> None:
        """Send one protocol frame: a dict, or its JSON text with its type as `kind`.

        The one way a frame reaches the socket: written at once when the server can
        (`write_frame`), else through the server's ASGI send. Nothing once the socket is
        closing: a room event that raced our close would make uvicorn raise, ending this
        consumer before its disconnect handler (group and presence cleanup) ran; the client
        gets the event when it resumes.
        """
        if self.closing:
            return
        if kind is None:
            kind = frame["type"]
            frame = json.dumps(frame, separators=(",", ":"))
        if not self.write_frame(frame, kind):
            self._count_sent(kind)
            await self._send({"type": "websocket.send", "text": frame})

    def write_frame(self, text: str, kind: str) -> bool:
        """Write a frame's JSON text at once, without a coroutine, if the server can; else False.

        The synchronous first half of `send_frame`, which the layer's reader reaches through
        `take`: a broadcast then costs each member no coroutine, no ASGI event and no framing
        of its own. Under daphne, or when the socket is closing or paused, it declines.
        """
        write = self._write
        if write is None or not write(text):
            return False
        self._count_sent(kind)
        return True

    def _count_sent(self, kind: str) -> None:
        # prometheus' labels() lookup costs more than the increment; the child is cached.
        counter = _SENT.get((self.route, kind))
        if counter is None:
            counter = _SENT[(self.route, kind)] = metrics.MESSAGES_SENT.labels(self.route, kind)
        counter.inc()

    async def stream_event(self, event):
        """Forward a pre-serialised stream frame (a notification, count, live or user update)."""
        await self.send_frame(event["text"], event["kind"])

    async def send_error(self, code: str, message: str, client_id=None, **extra) -> None:
        """Send the protocol's error frame."""
        metrics.MESSAGE_ERRORS.labels(self.route, code).inc()
        frame = {"type": "error", "code": code, "message": message, **extra}
        if client_id is not None:
            frame["client_id"] = client_id
        await self.send_frame(frame)

    # ------------------------------------------------------------------ heartbeat
    @classmethod
    async def heartbeat_many(cls, consumers) -> None:
        """Heartbeat these consumers of this class; subclasses batch what they read for them.

        One frame text serves the whole portion: every socket of a beat gets the same `ts`,
        so the frame is encoded and framed once (see `write_frame`), and a socket the server
        can write to at once costs no coroutine. Inactive sockets are closed instead.
        """
        text = json.dumps({"type": "heartbeat", "ts": time.time()}, separators=(",", ":"))
        idle_since = time.monotonic() - settings.WS_INACTIVITY_TIMEOUT
        sent = 0
        for consumer in consumers:
            try:
                if consumer.last_activity < idle_since:
                    metrics.HEARTBEAT_TIMEOUTS.inc()
                    await consumer.close(code=Close.INACTIVE, reason="inactive")
                    continue
                if consumer.closing:
                    continue
                sent += 1
                if not consumer.write_frame(text, "heartbeat"):
                    await consumer.send_frame(text, "heartbeat")
            except uvicorn_adapter.CLIENT_GONE:
                # Closed since the last beat: its disconnect event, already on its way,
                # cleans up; nothing failed.
                logger.debug("heartbeat of %s: the client is gone", consumer.channel_name)
            except Exception:
                logger.exception("heartbeat of %s failed", consumer.channel_name)
        metrics.HEARTBEAT_PINGS.inc(sent)

    def heartbeat_answered(self, data: dict) -> None:
        """Record a client's heartbeat answer and its round-trip time."""
        metrics.HEARTBEAT_PONGS.inc()
        sent = data.get("ts")
        if isinstance(sent, (int, float)) and not isinstance(sent, bool):
            rtt = time.time() - float(sent)
            if 0 <= rtt < 600:
                metrics.HEARTBEAT_RTT.observe(rtt)

    def presence_entries(self) -> list[tuple[str, str]]:
        """(scope, member) presence entries this connection keeps alive; none by default."""
        return []

    def groups_joined(self) -> list[str]:
        """Channel-layer groups this connection belongs to."""
        return list(self.groups)

    def resume_position(self) -> int | None:
        """The `seq` a client should resume from after a drain, if the route has one."""
        return None


def field(data: dict, name: str, kind, required: bool = True, default=None):
    """Read one typed field of a client frame, or raise the protocol's invalid_field error."""
    if name not in data or data[name] is None:
        if required:
            raise ProtocolError("invalid_field", f"{name} is required", field=name)
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError("invalid_field", f"{name} has the wrong type", field=name)
    if not isinstance(value, kinds):
        raise ProtocolError("invalid_field", f"{name} has the wrong type", field=name)
    return value
