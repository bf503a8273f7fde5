"""The realtime channel: one websocket per client, joined to one room by its token.

A connection gets a snapshot (or the events it missed), then the room's events in seq
order through the room's hub (signaling.fanout), and sends actions that are answered by
request id. Feature packages plug in through four hooks: ``actions`` (message handlers
with roles and rate limits), ``snapshot_parts`` (their share of the room snapshot, built
synchronously so it matches the seq it is sent with), ``snapshot_prepares`` (awaited just
before, to read a share kept elsewhere, e.g. stock on Redis) and ``on_close`` (cleanup when a
connection ends, e.g. a websocket viewer's peer connection).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import msgpack
import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from engine import metrics
from engine.bus.base import Bus
from engine.config import Config
from engine.digits import parse_uint
from engine.errors import CodedError, shown
from engine.rooms import Rooms
from signaling import protocol
from signaling.audience import Audience
from signaling.fanout import BINARY, TEXT, Frames, RoomHub, frame
from signaling.guard import AddressGate, http_error, peer_address
from signaling.protocol import ProtocolError
from signaling.ratelimit import UserLimits, Users
from signaling.tokens import Identity, TokenError, verify

log = logging.getLogger(__name__)

CLIENT_TURN = 0.002  # seconds one client's messages may hold the loop before others get a turn

# A handler answers with the ack's fields, or returns (or raises) a CodedError for an error reply.
Handler = Callable[["Session", dict[str, Any]], Awaitable[dict[str, Any] | CodedError | None]]


@dataclass(frozen=True, slots=True)
class Action:
    handler: Handler
    roles: frozenset[str]
    rate: tuple[float, int] | None


class Actions:
    """Message type -> handler, with the roles allowed to send it and its own rate limit."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}

    def register(self, type: str, roles: frozenset[str], handler: Handler,
                 rate: tuple[float, int] | None = None) -> None:
        if type in self._actions:
            raise ValueError(f"action {type!r} registered twice")
        self._actions[type] = Action(handler, roles, rate)

    def get(self, type: str) -> Action | None:
        return self._actions.get(type)


class Session:
    """One client connection: its identity, its place in the room's order, its limits."""

    def __init__(self, channel: Channel, connection: ServerConnection, identity: Identity,
                 room: str, conn_id: int, limits: UserLimits) -> None:
        self.channel = channel
        self.connection = connection
        self.transport = connection.transport
        self.identity = identity
        self.room = room
        self.role = identity.role
        self.sub = identity.sub
        self.conn_id = conn_id
        self.packed = connection.subprotocol == protocol.MSGPACK_SUBPROTOCOL
        # Without a compression extension every client gets the same pre-framed bytes.
        self.raw = not connection.protocol.extensions
        self.last_seq = 0
        self.lagging_since: float | None = None
        self.resync_bytes = 0  # size of the last snapshot that did not fit: none is built until it would
        self.limits = limits  # shared by all connections of this user
        self.flood = 0

    @property
    def open(self) -> bool:
        return self.connection.protocol.state is State.OPEN and not self.transport.is_closing()

    def deliver(self, frames: Frames) -> int:
        """Write the room events this connection has not seen; returns how many."""
        if self.lagging_since is not None or self.last_seq >= frames.last or not self.open:
            return 0
        if self.raw:
            data, count = frames.after(self.last_seq, self.packed)
            if not self.fits(len(data)):
                return 0
            self.transport.write(data)
        else:
            payloads = [event.packed if self.packed else event.json
                        for event in frames.events if event.seq > self.last_seq]
            if not self.fits(sum(map(len, payloads))):
                return 0
            for payload in payloads:
                self._send_payload(payload)
            self.connection.send_data()
            count = len(payloads)
        self.last_seq = frames.last
        return count

    def _send_payload(self, payload: bytes) -> None:
        if self.packed:
            self.connection.protocol.send_binary(payload)
        else:
            self.connection.protocol.send_text(payload)

    def encode(self, message: dict[str, Any]) -> bytes:
        return msgpack.packb(message) if self.packed else orjson.dumps(message)

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes stay within the send queue limit; if not, the client is lagging.

        Everything written to a client (events, acks, errors, direct messages) is checked here,
        so a client that does not read holds at most ``--send-queue-bytes`` of this process's memory."""
        if self.transport.get_write_buffer_size() + size <= self.channel.config.send_queue_bytes:
            return True
        self.mark_lagging()
        return False

    def send_now(self, message: dict[str, Any]) -> bool:
        """Write one message to this connection now (acks, errors, direct messages).

        False when it was not written: the connection is closed, or lagging (then it gets a
        snapshot with ``resync`` once it has caught up, or is closed 4008)."""
        if not self.open or self.lagging_since is not None:
            return False
        return self._write(self.encode(message))

    def _write(self, payload: bytes) -> bool:
        if self.raw:
            data = frame(BINARY if self.packed else TEXT, payload)
            if not self.fits(len(data)):
                return False
            self.transport.write(data)
        else:
            if not self.fits(len(payload)):  # before compression: an upper bound
                return False
            self._send_payload(payload)
            self.connection.send_data()
        return True

    async def send(self, message: dict[str, Any]) -> None:
        """Awaitable form of send_now for handlers that push several messages."""
        self.send_now(message)

    def mark_lagging(self) -> None:
        if self.lagging_since is None:
            self.lagging_since = time.monotonic()
            self.channel.lagging.add(self)
            metrics.SEND_QUEUE.labels("lagged").inc()

    def recover_or_close(self, now: float) -> None:
        config = self.channel.config
        if not self.open:
            self.channel.lagging.discard(self)
            return
        buffered = self.transport.get_write_buffer_size()
        if (buffered <= config.send_queue_bytes // 4 and buffered + self.resync_bytes <= config.send_queue_bytes
                and self.room != "*"):
            snapshot = self.encode(self.channel.snapshot(self, resync=True))
            if buffered + len(snapshot) + 16 <= config.send_queue_bytes:  # 16: the frame header
                self.lagging_since = None
                self.resync_bytes = 0
                self.channel.lagging.discard(self)
                self._write(snapshot)
                metrics.SEND_QUEUE.labels("resynced").inc()
                return
            self.resync_bytes = len(snapshot) + 16
        if self.lagging_since is not None and now - self.lagging_since > config.slow_close_after:
            self.lagging_since = None
            self.channel.lagging.discard(self)
            metrics.SEND_QUEUE.labels("closed").inc()
            self._drop(protocol.CLOSE_TOO_SLOW, "too slow: reconnect with since")

    def close(self, code: int, reason: str) -> None:
        asyncio.get_running_loop().create_task(self.connection.close(code, reason))

    def _drop(self, code: int, reason: str) -> None:
        """Close a client that does not read: a close handshake would wait behind its backlog.

        The close frame goes after what is already buffered (a client that catches up reads
        it), and the connection is cut after the close timeout either way.
        """
        self.connection.protocol.send_close(code, reason)
        self.connection.send_data()
        asyncio.get_running_loop().call_later(self.channel.close_timeout, self.transport.abort)


class Channel:
    """The websocket server and the registry of rooms' hubs on this node."""

    def __init__(self, config: Config, bus: Bus, rooms: Rooms, secret: str) -> None:
        self.config = config
        self.bus = bus
        self.rooms = rooms
        self.secret = secret
        self.actions = Actions()
        self.snapshot_parts: list[Callable[[Session], dict[str, Any]]] = []
        #: Awaited just before a snapshot is built, for parts whose data lives elsewhere (Redis):
        #: they fetch it here, and their snapshot part, built right after, hands it out.
        self.snapshot_prepares: list[Callable[[Session], Awaitable[None]]] = []
        self.on_close: list[Callable[[Session], Awaitable[None]]] = []
        self.hubs: dict[str, RoomHub] = {}
        #: Viewers per room, websocket and media paths together (the media relay reports its own).
        self.audience = Audience(lambda room, count: bus.set_state(room, "viewers", "viewers", {"count": count}))
        self.sessions: dict[int, Session] = {}
        self.lagging: set[Session] = set()  # checked every 100 ms, so the check never scans everyone
        self.users = Users(config.max_connections_per_user, config.msg_rate, config.msg_burst,
                           config.limiter_entries)
        self.addresses = AddressGate(config.max_ws_per_ip)
        self.close_timeout = 2.0
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._lag_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.ws_port,
            process_request=self._check_path,
            subprotocols=[protocol.MSGPACK_SUBPROTOCOL],
            select_subprotocol=_select_subprotocol,
            create_connection=functools.partial(_Connection, gate=self.addresses),
            compression="deflate" if self.config.permessage_deflate else None,
            max_size=self.config.max_frame,
            max_queue=16,
            close_timeout=self.close_timeout,
            open_timeout=self.config.ws_handshake_timeout,
        )
        self._lag_task = asyncio.get_running_loop().create_task(self._watch_laggards())

    async def stop(self) -> None:
        """Close every client with a resumable code, then the server."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        closing = [
            asyncio.ensure_future(s.connection.close(protocol.CLOSE_RESUMABLE_RESTART, "server restart"))
            for s in list(self.sessions.values())
        ]
        if closing:
            await asyncio.wait(closing, timeout=self.config.shutdown_grace)
        for session in list(self.sessions.values()):
            session.transport.abort()
        if self._lag_task is not None:
            self._lag_task.cancel()
        await self._server.wait_closed()
        for hub in list(self.hubs.values()):
            await hub.close()
        self.hubs.clear()

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/ws":
            return connection.respond(404, "not found: the websocket path is /ws\n")
        return None

    def snapshot(self, session: Session, resync: bool = False) -> dict[str, Any]:
        """The room as it is now, with the seq it reflects; later events follow it."""
        room = session.room
        body: dict[str, Any] = {
            "type": "snapshot",
            "room": room,
            "seq": self.bus.seq(room),
            "viewers": self.audience.count(room),
            "state": self.bus.state(room),
            "you": {"sub": session.sub, "role": session.role},
        }
        if resync:
            body["resync"] = True
        for part in self.snapshot_parts:
            body.update(part(session))
        session.last_seq = body["seq"]
        return body

    async def _prepare_snapshot(self, session: Session) -> None:
        for prepare in self.snapshot_prepares:
            await prepare(session)

    def _hub(self, room: str) -> RoomHub:
        hub = self.hubs.get(room)
        if hub is None:
            audience = self.audience

            def on_viewers(sub: str, delta: int) -> None:
                (audience.joined if delta > 0 else audience.left)(room, "ws", sub)

            config = self.config
            hub = self.hubs[room] = RoomHub(room, self.bus, config.fanout_slice, config.fanout_budget_ms / 1000,
                                            config.history_size, on_viewers)
        return hub

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        params = {k: v[-1] for k, v in parse_qs(urlsplit(connection.request.path).query).items()}
        try:
            identity, room, since = self._admit(params)
            limits = self.users.acquire(_user_key(identity, room))
            if limits is None:
                raise protocol.Refusal("too_many_connections", protocol.CLOSE_FLOOD,
                                       f"at most {self.config.max_connections_per_user} connections per user")
        except protocol.Refusal as refusal:
            metrics.rejected(refusal.code).inc()
            await connection.send(orjson.dumps(protocol.error(refusal.code, refusal.message)).decode())
            await connection.close(refusal.close_code, refusal.message[:120])
            return
        session = Session(self, connection, identity, room, next(self._ids), limits)
        if room != "*":
            try:
                await self._prepare_snapshot(session)  # then no await until the greeting is sent
            except BaseException:
                self.users.release(_user_key(identity, room))
                raise
        self.sessions[session.conn_id] = session
        metrics.CONNECTIONS.labels(session.role).inc()
        hub = None if room == "*" else self._hub(room)  # "*": a service in no room (purchase events)
        if hub is not None:
            hub.add(session)
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, identity.exp - time.time()), session.close, protocol.CLOSE_UNAUTHORIZED, "token expired")
        try:
            if hub is None:
                session.send_now({"type": "hello", "you": {"sub": session.sub, "role": session.role}})
            else:
                self._greet(session, since)
            turn = time.perf_counter()
            async for message in connection:
                if session.lagging_since is not None:
                    await self._caught_up(session)
                await self._on_message(session, message)
                # Frames a client sent together are all queued at once and taken without a pause:
                # a flood from one client must not keep the loop from everyone else.
                if time.perf_counter() - turn > CLIENT_TURN:
                    await asyncio.sleep(0)
                    turn = time.perf_counter()
        except ConnectionClosed:
            pass
        finally:
            expiry.cancel()
            self.users.release(_user_key(session.identity, session.room))
            if hub is not None:
                hub.remove(session)
            del self.sessions[session.conn_id]
            self.lagging.discard(session)
            metrics.CONNECTIONS.labels(session.role).dec()
            for cleanup in self.on_close:
                try:
                    await cleanup(session)
                except Exception:
                    log.exception("connection cleanup failed")
            if hub is not None and not hub.sessions and self.hubs.get(room) is hub:
                del self.hubs[room]
                await hub.close()

    def _admit(self, params: dict[str, str]) -> tuple[Identity, str, int | None]:
        """The connecting client's identity, room and resume seq, or a Refusal saying why not."""
        if len(self.sessions) >= self.config.max_connections:
            raise protocol.Refusal("overloaded", protocol.CLOSE_FULL, "server is full, retry later")
        token = params.get("token")
        if not token:
            raise protocol.Refusal("unauthorized", protocol.CLOSE_UNAUTHORIZED, "connect with ?token=...")
        try:
            identity = verify(self.secret, token)
        except TokenError as exc:
            raise protocol.Refusal(exc.code, protocol.CLOSE_UNAUTHORIZED, exc.message) from None
        room = params.get("room") or identity.room
        if not identity.may_enter(room):
            raise protocol.Refusal("unauthorized", protocol.CLOSE_UNAUTHORIZED, "token is not valid for this room")
        if room == "*":  # no room: only a service reading every room's purchase events
            if identity.role != "service":
                raise protocol.Refusal("unauthorized", protocol.CLOSE_UNAUTHORIZED, "only services may join no room")
            return identity, room, None
        if self.rooms.get(room) is None:
            raise protocol.Refusal("not_found", protocol.CLOSE_NOT_FOUND, f"no room {shown(room)}")
        raw_since = params.get("since")
        since = None if raw_since is None else parse_uint(raw_since, protocol.MAX_SEQ_DIGITS)
        if raw_since is not None and since is None:
            raise protocol.Refusal("bad_request", protocol.CLOSE_BAD_REQUEST,
                                   f"since must be an integer of 1-{protocol.MAX_SEQ_DIGITS} digits 0-9")
        return identity, room, since

    def _greet(self, session: Session, since: int | None) -> None:
        """Replay what the client missed, or send a snapshot when that is not possible."""
        if since is not None:
            events = self.bus.history(session.room, since)
            if events is not None:
                session.last_seq = since
                if events:
                    session.deliver(Frames(events))
                return
        session.send_now(self.snapshot(session))

    async def _on_message(self, session: Session, message: str | bytes) -> None:
        request_id = None
        try:
            if not session.limits.messages.take():
                session.flood += 1
                if session.flood > self.config.msg_burst:
                    session.close(protocol.CLOSE_FLOOD, "message flood")
                raise ProtocolError("rate_limited", "too many messages, slow down")
            session.flood = 0
            body = protocol.decode(message, session.packed)
            request_id = body.get("id")
            action = self.actions.get(body["type"])
            if action is None:
                raise ProtocolError("unknown_type", f"unknown message type {shown(body['type'])}")
            if session.role not in action.roles:
                raise ProtocolError("forbidden", f"a {session.role} may not send {shown(body['type'])}")
            if action.rate is not None and not session.limits.take(body["type"], action.rate):
                raise ProtocolError("rate_limited", f"too many {shown(body['type'])} messages, slow down")
            result = await action.handler(session, body)
            if isinstance(result, CodedError):
                _refuse(session, result, request_id)
                return
            ack: dict[str, Any] = {"type": "ack", "re": request_id}
            if result:
                ack.update(result)
            session.send_now(ack)
        except CodedError as exc:  # ProtocolError, or a domain/media refusal raised by a handler
            _refuse(session, exc, request_id)
        except Exception:
            log.exception("action failed")
            _refuse(session, CodedError("internal", "the server failed on this request"), request_id)

    async def _caught_up(self, session: Session) -> None:
        """Read nothing more from a client while it is not reading what it is sent.

        Its answers would only be dropped, so its next message waits here; websockets then stops
        reading the socket, and the client's own send buffer fills. The lagging watcher either
        resyncs the client (it reads again) or closes it."""
        while session.lagging_since is not None and session.open:
            await asyncio.sleep(0.05)

    async def _watch_laggards(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for session in list(self.lagging):
                await self._prepare_snapshot(session)
                session.recover_or_close(now)


def _user_key(identity: Identity, room: str) -> str:
    """Whose limits a connection draws on: a user is a token ``sub`` in a room (carts and sale limits
    are per room too), so the hosts of two rooms never share a budget even if their subs are equal."""
    return f"{room}\x00{identity.sub}"


def _refuse(session: Session, error: CodedError, request_id: Any) -> None:
    metrics.rejected(error.code).inc()
    session.send_now(protocol.error(error.code, error.message, request_id))


def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> str | None:
    """msgpack when the client asks for it, plain JSON (no subprotocol) otherwise."""
    return protocol.MSGPACK_SUBPROTOCOL if protocol.MSGPACK_SUBPROTOCOL in subprotocols else None


class _Connection(ServerConnection):
    """A websocket connection that reference counting alone frees once it is closed.

    Left alone, websockets keeps reference cycles in every connection: ``select_subprotocol``
    is bound onto the sans-I/O protocol, and the bound callback's closure holds the connection;
    the protocol's parser is a generator that stays suspended after the close, its frame holding
    the protocol; a connection that ended without a close frame (a dropped viewer) also keeps the
    parser's error, whose traceback holds a frame that holds the protocol. Such garbage waits for a
    full cyclic collection, which takes most of a second with 10,000 viewers connected and holds
    the loop all that time (bench/RESULTS.md, "Event fan-out"), and it cannot be frozen away
    (engine.gcpolicy). Once the transport is gone the callback and the parser are unused and the
    tracebacks are only diagnostics: dropping them here breaks every cycle, however the
    connection ended.

    It also counts open connections per client address (``--max-ws-per-ip``) from the moment
    the TCP connection is accepted, before any handshake: past the cap it is answered 429 and closed.
    """

    def __init__(self, *args: Any, gate: AddressGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        address = peer_address(transport)
        if self._gate.admit(address):
            self._address = address
            return
        metrics.REFUSED_CONNECTIONS.labels("ws", "per_ip").inc()
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        transport.write(http_error(429, "too_many_connections",
                                   f"at most {self._gate.cap} websocket connections per client address"))
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            self._gate.release(self._address)
            self._address = None
        super().connection_lost(exc)
        vars(self.protocol).pop("select_subprotocol", None)
        self.protocol.parser.close()  # its suspended frame holds the protocol
        _drop_tracebacks(self.protocol.parser_exc, self.protocol.handshake_exc, self.connection_exc)


def _drop_tracebacks(*errors: BaseException | None) -> None:
    """Clear the tracebacks of these exceptions and of their causes and contexts."""
    stack = [error for error in errors if error is not None]
    seen: set[int] = set()
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        stack += [e for e in (error.__cause__, error.__context__) if e is not None]
