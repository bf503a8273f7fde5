"""The realtime channel: one websocket per client, joined to one room by its token.

A connection gets a snapshot (or the events it missed), then the room's events in seq
order through the room's hub (signaling.fanout), and sends actions that are answered by
request id. Feature packages plug in through four hooks: ``actions`` (message handlers
with roles and rate limits), ``snapshot_parts`` (their share of the room snapshot, built
synchronously so it matches the seq it is sent with), ``snapshot_prepares`` (awaited just
before, to read a share kept elsewhere, e.g. stock on Redis: each returns its share, which the
channel hands to the snapshot it builds next) and ``on_close`` (cleanup when a connection ends,
e.g. a websocket viewer's peer connection).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import orjson
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
from signaling.guard import AddressGate
from signaling.protocol import ProtocolError
from signaling.ratelimit import UserLimits, Users
from signaling.tokens import Identity, TokenError, verify
from signaling.websocket import Listener, WebSocket

log = logging.getLogger(__name__)

CLIENT_TURN = 0.002  # seconds one client's messages may hold the loop before others get a turn
UNGREETED = 1 << 63  # a connection's last seq until its snapshot or replay: past every seq, it gets no event

# A message's checks: its action, body (None once checked: decoded again) and request id, or the
# error to answer it with.
Checked = tuple["Action | None", "dict[str, Any] | None", Any, "Exception | None"]

# A handler answers with the ack's fields, or returns (or raises) a CodedError for an error reply.
# It is a coroutine function: the channel steps it itself, and makes a task only if it suspends.
Handler = Callable[["Session", dict[str, Any]], Coroutine[Any, Any, dict[str, Any] | CodedError | None]]


@dataclass(frozen=True, slots=True)
class Action:
    handler: Handler
    roles: frozenset[str]
    rate: tuple[float, int] | None
    inline: bool  # does not suspend on the embedded backends: answered in the read callback, no task
    #: With Redis: whether this message's answer waits on nothing but pipelined Redis calls
    #: (engine.redisbatch futures), so callbacks can step it without a task (redis-py's own
    #: calls need one). None: always a task.
    hot: Callable[[Session, dict[str, Any]], bool] | None


class Actions:
    """Message type -> handler, with the roles allowed to send it and its own rate limit."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}

    def register(self, type: str, roles: frozenset[str], handler: Handler,
                 rate: tuple[float, int] | None = None, inline: bool = False,
                 hot: Callable[[Session, dict[str, Any]], bool] | None = None) -> None:
        """``inline``: the handler does not suspend when the bus and stores are this process's own
        (a tap on the memory store, chat), so the channel steps it without a task. ``hot``: with
        Redis, says of a message whether its handler awaits only pipelined Redis calls (a tap on
        a loaded shop), which the channel then steps from their replies, without a task."""
        if type in self._actions:
            raise ValueError(f"action {type!r} registered twice")
        self._actions[type] = Action(handler, roles, rate, inline, hot)

    def get(self, type: str) -> Action | None:
        return self._actions.get(type)


class Session:
    """One client connection: its identity, its place in the room's order, its limits."""

    def __init__(self, channel: Channel, connection: WebSocket, identity: Identity,
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
        self.last_seq = UNGREETED
        self.lagging_since: float | None = None
        self.resync_bytes = 0  # size of the last snapshot that did not fit: none is built until it would
        self.limits = limits  # shared by all connections of this user
        self.flood = 0
        #: A message was put back while lagging: the resync releases the connection. Otherwise the
        #: connection may be held by an answer in flight, whose own end releases it (in order).
        self.deferred = False
        self.expiry: asyncio.TimerHandle | None = None  # the token's end

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
            self.connection.write(data)
        else:
            payloads = [event.packed if self.packed else event.json
                        for event in frames.events if event.seq > self.last_seq]
            if not self.fits(sum(map(len, payloads))):
                return 0
            for payload in payloads:
                self._send_payload(payload)
            self.connection.flush_protocol()
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
        if self.connection.buffered() + size <= self.channel.config.send_queue_bytes:
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

    def write_payload(self, payload: bytes) -> bool:
        """Write one encoded message (JSON or msgpack, as this connection speaks)."""
        if not self.open or self.lagging_since is not None:
            return False
        return self._write(payload)

    def _write(self, payload: bytes) -> bool:
        if self.raw:
            data = frame(BINARY if self.packed else TEXT, payload)
            if not self.fits(len(data)):
                return False
            self.connection.write(data)
        else:
            if not self.fits(len(payload)):  # before compression: an upper bound
                return False
            self._send_payload(payload)
            self.connection.flush_protocol()
        return True

    async def send(self, message: dict[str, Any]) -> None:
        """Awaitable form of send_now for handlers that push several messages."""
        self.send_now(message)

    def mark_lagging(self) -> None:
        if self.lagging_since is None:
            self.lagging_since = time.monotonic()
            self.channel.lagging.add(self)
            metrics.SEND_QUEUE.labels("lagged").inc()

    def recover_or_close(self, now: float, prepared: Sequence[dict[str, Any]] = ()) -> None:
        """Resync a lagging connection that has caught up (with the snapshot parts ``prepared`` for
        it), or close one lagging for too long; a closed one is simply let go."""
        config = self.channel.config
        if not self.open:
            self.channel.lagging.discard(self)
            return
        buffered = self.connection.buffered()
        if (buffered <= config.send_queue_bytes // 4 and buffered + self.resync_bytes <= config.send_queue_bytes
                and self.room != "*"):
            snapshot = self.encode(self.channel.snapshot(self, resync=True, prepared=prepared))
            if buffered + len(snapshot) + 16 <= config.send_queue_bytes:  # 16: the frame header
                self.lagging_since = None
                self.resync_bytes = 0
                self.channel.lagging.discard(self)
                self.write_payload(snapshot)
                metrics.SEND_QUEUE.labels("resynced").inc()
                if self.deferred:  # its messages waited while it was not reading
                    self.deferred = False
                    self.connection.release()
                return
            self.resync_bytes = len(snapshot) + 16
        if self.lagging_since is not None and now - self.lagging_since > config.slow_close_after:
            self.lagging_since = None
            self.channel.lagging.discard(self)
            metrics.SEND_QUEUE.labels("closed").inc()
            self.close(protocol.CLOSE_TOO_SLOW, "too slow: reconnect with since")

    def close(self, code: int, reason: str) -> None:
        """Close with ``code``; the close frame queues behind what is buffered, and a client that
        does not read is cut after the close timeout (a handshake would wait behind its backlog)."""
        self.connection.close(code, reason)


class Channel:
    """The websocket server and the registry of rooms' hubs on this node (the websocket layer's Handler)."""

    def __init__(self, config: Config, bus: Bus, rooms: Rooms, secret: str) -> None:
        self.config = config
        self.bus = bus
        self.rooms = rooms
        self.secret = secret
        self.actions = Actions()
        self.snapshot_parts: list[Callable[[Session], dict[str, Any]]] = []
        #: Awaited just before a snapshot is built, for parts whose data lives elsewhere (Redis):
        #: each returns its part, which goes into the snapshot built right after.
        self.snapshot_prepares: list[Callable[[Session], Awaitable[dict[str, Any]]]] = []
        self.on_close: list[Callable[[Session], Awaitable[None]]] = []
        self.hubs: dict[str, RoomHub] = {}
        #: Viewers per room, websocket and media paths together (the media relay reports its own).
        self.audience = Audience(lambda room, count: bus.set_state(room, "viewers", "viewers", {"count": count}))
        self.sessions: dict[int, Session] = {}
        self.lagging: set[Session] = set()  # checked every 100 ms, so the check never scans everyone
        self.users = Users(config.max_connections_per_user, config.msg_rate, config.msg_burst,
                           config.limiter_entries)
        self.listener = Listener(
            self, gate=AddressGate(config.max_ws_per_ip), path="/ws",
            subprotocols=[protocol.MSGPACK_SUBPROTOCOL], compression=config.permessage_deflate,
            max_size=config.max_frame, open_timeout=config.ws_handshake_timeout, close_timeout=2.0,
            max_inbox=config.ws_inbox, max_inbox_bytes=config.ws_inbox_bytes, turn=CLIENT_TURN,
            max_buffer=config.send_queue_bytes)
        self._ids = itertools.count(1)
        self._refusals = Refusals()
        # With Redis every action may wait on it, and redis-py's calls need a task around them
        # (unless the action says a message is hot: see Action.hot).
        self._inline = not config.redis_url
        self._background: set[asyncio.Task[None]] = set()  # answers that suspend, and close cleanups
        self._stepped: set[_Stepped] = set()  # hot answers waiting on Redis (no task to wait for)
        self._stepped_gone: asyncio.Future[None] | None = None  # set once they are answered, when stopping
        self._timers: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def close_timeout(self) -> float:
        """Seconds a closing client has to answer the close frame before it is cut."""
        return self.listener.close_timeout

    @close_timeout.setter
    def close_timeout(self, seconds: float) -> None:
        self.listener.close_timeout = seconds

    async def start(self) -> None:
        await self.listener.start(self.config.host, self.config.ws_port)
        loop = asyncio.get_running_loop()
        self._timers = [loop.create_task(self._watch_laggards()), loop.create_task(self._keepalive())]

    async def stop(self) -> None:
        """Close every client with a resumable code, finish answers in flight, then the hubs."""
        self.listener.stop_listening()
        for ws in list(self.listener.connections):
            if ws.session is None:
                ws.abort()  # still in its handshake, or refused
            else:
                ws.close(protocol.CLOSE_RESUMABLE_RESTART, "server restart")
        await self.listener.wait_closed(self.config.shutdown_grace)
        for timer in self._timers:
            timer.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.config.shutdown_grace)
        if self._stepped:
            self._stepped_gone = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._stepped_gone], timeout=self.config.shutdown_grace)
        for hub in list(self.hubs.values()):
            await hub.close()
        self.hubs.clear()

    def snapshot(self, session: Session, resync: bool = False,
                 prepared: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The room as it is now, with the seq it reflects; later events follow it. ``prepared``
        holds the parts the snapshot prepares just read for it."""
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
        for part in prepared:
            body.update(part)
        for build in self.snapshot_parts:
            body.update(build(session))
        session.last_seq = body["seq"]
        return body

    async def _prepare_snapshot(self, session: Session) -> list[dict[str, Any]]:
        """The parts read ahead for the session's next snapshot, to pass to it (nothing is kept
        anywhere else: a session that leaves meanwhile leaves nothing behind)."""
        return [await prepare(session) for prepare in self.snapshot_prepares]

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

    # -- the websocket layer's Handler ---------------------------------------------------------

    def opened(self, ws: WebSocket) -> None:
        assert ws.request is not None
        params = {k: v[-1] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        try:
            identity, room, since = self._admit(params)
            limits = self.users.acquire(_user_key(identity, room))
            if limits is None:
                raise protocol.Refusal("too_many_connections", protocol.CLOSE_FLOOD,
                                       f"at most {self.config.max_connections_per_user} connections per user")
        except protocol.Refusal as refusal:
            metrics.rejected(refusal.code)
            ws.write(frame(TEXT, orjson.dumps(protocol.error(refusal.code, refusal.message))))
            ws.close(refusal.close_code, refusal.message[:120])
            return
        session = Session(self, ws, identity, room, next(self._ids), limits)
        ws.session = session
        self.sessions[session.conn_id] = session
        metrics.CONNECTIONS.labels(session.role).inc()
        session.expiry = asyncio.get_running_loop().call_later(
            max(0.0, identity.exp - time.time()), session.close, protocol.CLOSE_UNAUTHORIZED, "token expired")
        if room == "*":  # a service in no room (purchase events)
            session.send_now({"type": "hello", "you": {"sub": session.sub, "role": session.role}})
            return
        self._hub(room).add(session)  # it gets no event before its greeting (UNGREETED)
        if self._inline and not self.snapshot_prepares:
            self._greet(session, since)  # the memory bus has nothing to load first
            return
        # A shared backend: the bus may first load the room, and parts of the snapshot are read
        # from a store that suspends; the connection's messages wait meanwhile.
        ws.hold(reading=True)
        self._spawn(self._greet_later(session, since))

    def arrived(self, ws: WebSocket, data: bytes, binary: bool) -> Checked | None:
        """A message that arrived while an answer is in flight: its checks (rate limits above all)
        are made now, when the client sent it, and their verdict waits with it for its turn. Were
        they made in its turn, a client whose taps waited on a slow Redis would see them judged as
        one burst and refused ``rate_limited`` for our own delay."""
        session: Session | None = ws.session
        if session is None:
            return None
        if session.lagging_since is not None:
            ws.hold()  # a client that does not read: read nothing more from it either
        action, _, request_id, error = self._check(session, data, binary)
        # Only the verdict waits: the body is decoded again in its turn, as a decoded body can
        # take many times the bytes the inbox's bound counts.
        return action, None, request_id, error

    def received(self, ws: WebSocket, data: bytes, binary: bool, early: Checked | None) -> None:
        session: Session | None = ws.session
        if session is None:
            return  # refused: its close is on the way
        if session.lagging_since is not None:
            # Its answers would only be dropped: read nothing more from it until it reads again
            # (then the lagging watcher resyncs it and releases its messages) or is closed.
            session.deferred = True
            ws.defer(data, binary, early)
            return
        self._on_message(session, data, binary, early)

    def closed(self, ws: WebSocket) -> None:
        session: Session | None = ws.session
        if session is None:
            return
        if session.expiry is not None:
            session.expiry.cancel()
        self.users.release(_user_key(session.identity, session.room))
        hub = self.hubs.get(session.room)
        empty = None
        if hub is not None:
            hub.remove(session)
            if not hub.sessions:
                del self.hubs[session.room]
                empty = hub
        del self.sessions[session.conn_id]
        self.lagging.discard(session)
        metrics.CONNECTIONS.labels(session.role).dec()
        self._spawn(self._cleanup(session, empty))

    async def _cleanup(self, session: Session, empty_hub: RoomHub | None) -> None:
        for cleanup in self.on_close:
            try:
                await cleanup(session)
            except Exception:
                log.exception("connection cleanup failed")
        if empty_hub is not None:
            await empty_hub.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- joining ------------------------------------------------------------------------------

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

    async def _greet_later(self, session: Session, since: int | None) -> None:
        try:
            await self.bus.ready(session.room)
            prepared = await self._prepare_snapshot(session)  # then no await until the greeting is sent
        except CodedError as exc:
            self._not_ready(session, exc)
        else:
            if session.connection.session is session:  # still connected
                self._greet(session, since, prepared)
        finally:
            session.connection.release()

    def _not_ready(self, session: Session, error: CodedError) -> None:
        """The room's events cannot be read now: say why and close resumably (reconnect with since)."""
        metrics.rejected(error.code)
        session.send_now(protocol.error(error.code, error.message))
        session.close(protocol.CLOSE_RESUMABLE_RESTART, "events unavailable, reconnect with since")

    def _greet(self, session: Session, since: int | None, prepared: Sequence[dict[str, Any]] = ()) -> None:
        """Replay what the client missed, or send a snapshot (with the parts ``prepared`` for it)
        when that is not possible."""
        if since is not None:
            events = self.bus.history(session.room, since)
            if events is not None:
                session.last_seq = since
                if events:
                    session.deliver(Frames(events))
                return
        session.send_now(self.snapshot(session, prepared=prepared))

    # -- messages -----------------------------------------------------------------------------

    def _check(self, session: Session, data: bytes, binary: bool) -> Checked:
        """Rate limits, decoding, routing and role of one message: its action and body to run, or
        the error to answer it with (with its request id once known)."""
        request_id = None
        try:
            if not session.limits.messages.take():
                session.flood += 1
                if session.flood > self.config.msg_burst:
                    session.close(protocol.CLOSE_FLOOD, "message flood")
                raise ProtocolError("rate_limited", "too many messages, slow down")
            session.flood = 0
            body = protocol.decode(data, binary and session.packed)
            request_id = body.get("id")
            action = self.actions.get(body["type"])
            if action is None:
                raise ProtocolError("unknown_type", f"unknown message type {shown(body['type'])}")
            if session.role not in action.roles:
                raise ProtocolError("forbidden", f"a {session.role} may not send {shown(body['type'])}")
            if action.rate is not None and not session.limits.take(body["type"], action.rate):
                raise ProtocolError("rate_limited", f"too many {shown(body['type'])} messages, slow down")
        except Exception as exc:
            return None, None, request_id, exc
        return action, body, request_id, None

    def _on_message(self, session: Session, data: bytes, binary: bool, early: Checked | None) -> None:
        """Check (unless ``early`` holds its checks, made when it arrived), route and answer one
        message, in the websocket layer's callback.

        An inline handler (a tap on the memory store, chat) and every refusal are run to their end
        right here, without a task. With Redis, a hot message (a tap on a loaded shop: see
        ``Action.hot``) starts here too and is stepped from its Redis replies. Other handlers (a
        checkout writing its order, a media offer, anything calling redis-py, which needs a task
        around its calls) run as a task, and so does the rest of an inline one that did suspend;
        this connection's next messages wait for it, so each connection is still answered in order."""
        if early is None:
            action, body, request_id, error = self._check(session, data, binary)
        else:
            action, body, request_id, error = early
        if error is not None or action is None:
            self._conclude(session, None, error, request_id)
            return
        try:
            if body is None:  # checked when it arrived
                body = protocol.decode(data, binary and session.packed)
            answer = action.handler(session, body)
            pending: Awaitable[Any] = answer
            hot = not self._inline and action.hot is not None and action.hot(session, body)
            if (action.inline and self._inline) or hot:
                try:
                    waiting_on = answer.send(None)
                except StopIteration as done:
                    self._answer(session, done.value, request_id)
                    return
                if hot:  # its Redis replies step the rest
                    _Stepped(self, session, answer, request_id).follow(waiting_on)
                    return
                pending = _Resumed(answer, waiting_on)  # it did suspend: a task drives the rest
            session.connection.hold(reading=True)
            self._spawn(self._answer_later(session, pending, request_id))
        except Exception as exc:  # a domain/media refusal raised by a handler, or a failure
            self._conclude(session, None, exc, request_id)

    async def _answer_later(self, session: Session, pending: Awaitable[Any], request_id: Any) -> None:
        try:
            result = await pending
        except Exception as exc:
            self._conclude(session, None, exc, request_id)
        else:
            self._conclude(session, result, None, request_id)
        finally:
            session.connection.release()

    def _conclude(self, session: Session, result: Any, error: Exception | None, request_id: Any) -> None:
        """Answer a message once its handling ended, however it is driven (inline, by a task or
        stepped from Redis replies): with ``result`` if nothing was raised, else with the refusal
        ``error`` is, or, for any other exception, with an "internal" refusal after logging it."""
        if error is None:
            self._answer(session, result, request_id)
        elif isinstance(error, CodedError):
            self._refuse(session, error, request_id)
        else:
            log.error("action failed", exc_info=error)
            self._refuse(session, CodedError("internal", "the server failed on this request"), request_id)

    def _answer(self, session: Session, result: dict[str, Any] | CodedError | None, request_id: Any) -> None:
        if isinstance(result, CodedError):
            self._refuse(session, result, request_id)
            return
        ack: dict[str, Any] = {"type": "ack", "re": request_id}
        if result:
            ack.update(result)
        session.send_now(ack)

    def _refuse(self, session: Session, error: CodedError, request_id: Any) -> None:
        metrics.rejected(error.code)
        session.write_payload(self._refusals.payload(error.code, error.message, request_id, session.packed))

    # -- timers -------------------------------------------------------------------------------

    async def _watch_laggards(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for session in list(self.lagging):
                session.recover_or_close(now, await self._prepare_snapshot(session))

    async def _keepalive(self) -> None:
        """Ping every connection each interval; one that sent nothing since the last ping is cut
        (a half-open TCP connection would otherwise hold its slot and its user's limits for good)."""
        while True:
            await asyncio.sleep(self.config.ws_ping_interval)
            self.listener.ping_all(time.monotonic())


class Refusals:
    """Error answers as encoded bytes, built once per (code, message, encoding): during a sell-out
    most answers are the same ``sold_out`` or ``rate_limited``, and only the request id differs."""

    MAX = 256  # distinct refusals kept; past that the cache starts again

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str, bool], tuple[bytes, bytes, bytes]] = {}

    def payload(self, code: str, message: str, request_id: Any, packed: bool) -> bytes:
        key = (code, message, packed)
        parts = self._parts.get(key)
        if parts is None:
            if len(self._parts) >= self.MAX:
                self._parts.clear()
            parts = self._parts[key] = self._build(code, message, packed)
        if request_id is None:
            return parts[0]
        return parts[1] + (msgpack.packb(request_id) if packed else orjson.dumps(request_id)) + parts[2]

    @staticmethod
    def _build(code: str, message: str, packed: bool) -> tuple[bytes, bytes, bytes]:
        """The answer without ``re``, and the bytes before and after the request id's."""
        body = protocol.error(code, message)
        if packed:
            bare = msgpack.packb(body)
            return bare, bytes([bare[0] + 1]) + bare[1:] + msgpack.packb("re"), b""  # fixmap of 3 -> 4
        bare = orjson.dumps(body)
        return bare, bare[:-1] + b',"re":', b"}"


class _Stepped:
    """Steps a hot answer (see ``Action.hot``) from the callbacks of the futures it awaits, as a
    task would, without one: a tap on Redis costs no task, no wrapper coroutine and no extra loop
    turn. The connection is held meanwhile (its next messages wait, so each is answered in order),
    and corked while a step runs, so the line the tap added and its answer leave in one write."""

    __slots__ = ("_channel", "_session", "_coro", "_request_id")

    def __init__(self, channel: Channel, session: Session, coro: Coroutine[Any, Any, Any], request_id: Any) -> None:
        self._channel = channel
        self._session = session
        self._coro = coro
        self._request_id = request_id
        session.connection.hold(reading=True)
        channel._stepped.add(self)

    def follow(self, waiting_on: Any) -> None:
        """Wake on ``waiting_on`` (what the coroutine yielded): a future, or None for a bare yield."""
        if waiting_on is None:
            asyncio.get_running_loop().call_soon(self._wake, None)
        elif getattr(waiting_on, "_asyncio_future_blocking", None):
            waiting_on._asyncio_future_blocking = False
            waiting_on.add_done_callback(self._wake)
        else:  # not a future: a handler that is not hot after all (a bug), answered as one
            self._coro.close()
            self._finish(None, RuntimeError(f"a hot answer awaited {waiting_on!r}"))

    def _wake(self, _: Any) -> None:
        connection = self._session.connection
        connection.cork()
        try:
            waiting_on = self._coro.send(None)
        except StopIteration as done:
            self._finish(done.value, None)
        except asyncio.CancelledError:  # the engine is stopping: nobody to answer
            self._done()
        except Exception as exc:
            self._finish(None, exc)
        else:
            self.follow(waiting_on)
        finally:
            connection.uncork()

    def _finish(self, result: Any, error: Exception | None) -> None:
        try:
            self._channel._conclude(self._session, result, error, self._request_id)
        finally:
            self._done()

    def _done(self) -> None:
        channel = self._channel
        channel._stepped.discard(self)
        self._session.connection.release()
        gone = channel._stepped_gone
        if not channel._stepped and gone is not None and not gone.done():
            gone.set_result(None)


class _Resumed:
    """Awaits the rest of a coroutine that was started outside a task and suspended.

    The channel runs each answer's first step synchronously; when the coroutine waits on
    something (``waiting_on``, a future), this hands that to the task now driving it and keeps
    stepping the coroutine, as ``await`` would have from the start."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: B036 (cancellation too goes to the coroutine)
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as done:
                    return done.value


def _user_key(identity: Identity, room: str) -> str:
    """Whose limits a connection draws on: a user is a token ``sub`` in a room (carts and sale limits
    are per room too), so the hosts of two rooms never share a budget even if their subs are equal."""
    return f"{room}\x00{identity.sub}"
