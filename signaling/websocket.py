"""WebSocket connections served from asyncio's protocol callbacks: no task and no future per message.

websockets' asyncio server runs a task per connection and hands every message through an
assembler, a future and a task wake-up; on a flash sale's tap storm that layer cost as much
as the shop itself. Here the same library's sans-I/O ``ServerProtocol`` (handshake, frame
limits, UTF-8 of close reasons, ping answers, the close handshake) is driven straight from
``data_received``, and each complete message is handed to the ``Handler`` in that callback.

What the layer guarantees its handler:
- messages of one connection arrive in order, one at a time; a handler that must wait calls
  ``hold`` and later ``release``, and meanwhile messages wait in an inbox bounded in count (past
  it the connection is closed 4429) and in bytes (past it reading pauses). A hold for an
  answer in flight keeps reading (``hold(reading=True)``): each message is shown to the handler
  as it arrives (``arrived``, where it meets its rate limits at the time the client sent it) and
  handed over in its turn with what ``arrived`` returned. A hold for a client that does not read
  stops reading;
- one client's burst holds the loop for at most ``turn`` seconds before others get a turn;
- writes made while messages are handled are corked and go out in one ``write`` per read,
  so an answer and the direct messages it caused share a TCP segment;
- a peer that answers no ping within a keepalive interval, or leaves a handshake or a close
  handshake unfinished, is cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import Frame, Opcode, apply_mask
from websockets.http11 import Request
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from engine import metrics
from signaling.guard import AddressGate, http_error, peer_address

log = logging.getLogger(__name__)

TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
OPEN, CONNECTING = State.OPEN, State.CONNECTING
PONG_HEAD = 0x80 | Opcode.PONG  # first byte of a server's pong frame: FIN, no RSV bit (never compressed)


class Handler(Protocol):
    """What the channel implements to serve connections."""

    def opened(self, ws: WebSocket) -> None:
        """The handshake succeeded (101 sent); the handler may write, hold or close."""

    def arrived(self, ws: WebSocket, data: bytes, binary: bool) -> Any:
        """A message read while the connection is held but reading; what this returns comes back
        with the message in ``received``. It may close the connection (the message is then dropped)."""

    def received(self, ws: WebSocket, data: bytes, binary: bool, early: Any) -> None:
        """One complete message (text frames arrive as their UTF-8 bytes), in its turn; ``early`` is
        what ``arrived`` returned for it, or None when it was read while the connection was not held."""

    def closed(self, ws: WebSocket) -> None:
        """The TCP connection is gone (after ``opened`` only)."""


class _Protocol(ServerProtocol):
    """websockets' sans-I/O server with our subprotocol rule as a method: a callback bound onto
    the instance would make a reference cycle that only a full collection frees."""

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        offered = self.available_subprotocols or ()
        return next((s for s in offered if s in subprotocols), None)


class Listener:
    """Settings and bookkeeping shared by every connection of one listening socket."""

    def __init__(self, handler: Handler, *, gate: AddressGate, path: str, subprotocols: Sequence[str],
                 compression: bool, max_size: int, open_timeout: float, close_timeout: float,
                 max_inbox: int, max_inbox_bytes: int, turn: float, max_buffer: int) -> None:
        self.handler = handler
        self.gate = gate
        self.path = path
        self.subprotocols = [Subprotocol(s) for s in subprotocols]
        self.extensions = enable_server_permessage_deflate(None) if compression else None
        self.max_size = max_size
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_inbox = max_inbox
        self.max_inbox_bytes = max_inbox_bytes  # past it, a hold that reads stops reading until released
        self.turn = turn
        self.max_buffer = max_buffer  # bytes a client may owe before pongs to its pings are dropped
        self.connections: set[WebSocket] = set()
        self._server: asyncio.Server | None = None
        self._gone = asyncio.Event()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: WebSocket(self), host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self, timeout: float) -> None:
        """Wait until every connection is gone, at most ``timeout``; then cut what is left."""
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            self._gone.clear()
            try:
                await asyncio.wait_for(self._gone.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        for ws in list(self.connections):
            ws.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def forget(self, ws: WebSocket) -> None:
        self.connections.discard(ws)
        self._gone.set()

    def ping_all(self, now: float) -> None:
        """Keepalive: cut connections that sent nothing since the last ping, ping the others. The
        cuts are logged, one line per round: a client sees them as a reset without a close frame."""
        cut = 0
        for ws in list(self.connections):
            if ws.protocol.state is not OPEN:
                continue
            if ws.pinged_at is not None and ws.received_at < ws.pinged_at and not ws.paused:
                ws.abort()  # (a connection whose reading is paused may have its pong waiting unread)
                cut += 1
                continue
            ws.pinged_at = now
            ws.protocol.send_ping(b"")
            ws.flush_protocol()
        if cut:
            log.info("keepalive: cut %d connection(s) that sent nothing, not even a pong, for a whole ping interval",
                     cut)


class WebSocket(asyncio.Protocol):
    """One client connection: the sans-I/O protocol, its transport, and what the handler keeps on it."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.protocol = _Protocol(extensions=listener.extensions, subprotocols=listener.subprotocols,
                                  max_size=listener.max_size)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.request: Request | None = None
        self.subprotocol: str | None = None
        self.session: Any = None  # the handler's object for this connection
        self.received_at = 0.0  # monotonic time of the last bytes received (keepalive)
        self.pinged_at: float | None = None
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None  # handshake or close deadline
        self._out: list[bytes] | None = None  # corked writes while messages are handled
        self._out_bytes = 0
        self._eof = False
        self._head = b""  # the last bytes of the opening request so far (its end may span reads)
        self._rest = b""  # the start of a frame not yet complete
        self._parts: list[bytes] = []  # fragments of a message being assembled
        self._parts_binary = False
        self._inbox: deque[tuple[bytes, bool, Any]] = deque()  # message, binary, what `arrived` made of it
        self._inbox_bytes = 0
        self._unjudged = 0  # messages in the inbox read without `arrived` (judged in their turn)
        self._held = False
        self._reading = False  # the hold keeps reading the socket
        self._paused = False  # reading the socket is paused
        self._turn_started = 0.0
        self._split = False  # this read's turn is over: its remaining messages wait, whatever their number
        self._opened = False
        self._closing = False  # we sent a close frame

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        listener = self.listener
        address = peer_address(transport)
        if not listener.gate.admit(address):
            metrics.REFUSED_CONNECTIONS.labels("ws", "per_ip").inc()
            self.transport.write(http_error(429, "too_many_connections",
                                            f"at most {listener.gate.cap} websocket connections per client address"))
            self.transport.close()
            return
        self._address = address
        listener.connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(listener.open_timeout, self.abort)

    def data_received(self, data: bytes) -> None:
        self.received_at = time.monotonic()
        self._split = False
        protocol = self.protocol
        self.cork()
        self._turn_started = time.perf_counter()
        try:
            if protocol.state is CONNECTING:
                data = self._request_bytes(data)
            if not data:
                return
            if protocol.state is not OPEN or protocol.extensions:
                self._feed(data)
                return
            if self._rest:
                data = self._rest + data
            items, self._rest = split_frames(data, self.listener.max_size, protocol.current_size is not None)
            for item in items:
                if type(item) is tuple:
                    if protocol.state is OPEN:  # nothing after a client's close frame counts
                        self._message(*item)
                else:
                    self._feed(cast(bytes, item))
        finally:
            self.flush_protocol()  # pongs, the close handshake's answer and end of stream
            self.uncork()

    def _request_bytes(self, data: bytes) -> bytes:
        """Give the protocol the opening request and return the bytes after it (frames a client
        sent without waiting for the 101), which the frame splitter reads from a frame boundary."""
        seen = self._head + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head = seen[-3:]
            self._feed(data)
            return b""
        split = end + 4 - len(self._head)
        self._head = b""
        self._feed(data[:split])
        return data[split:]

    def _feed(self, data: bytes) -> None:
        """Hand bytes to the sans-I/O protocol: the handshake, control frames, fragments, errors."""
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if type(event) is Frame:
                self._frame(event)
            else:
                self._handshake(cast(Request, event))

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self.flush_protocol()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._address is not None:
            self.listener.gate.release(self._address)
            self._address = None
        self.listener.forget(self)
        protocol = self.protocol
        protocol.receive_eof()  # state CLOSED whatever the peer did
        self._inbox.clear()
        self._inbox_bytes = 0
        self._unjudged = 0
        if self._opened:
            self._opened = False
            try:
                self.listener.handler.closed(self)
            except Exception:
                log.exception("websocket close handling failed")
        self.session = None
        protocol.parser.close()  # its suspended frame holds the protocol
        _drop_tracebacks(protocol.parser_exc, protocol.handshake_exc)

    # -- receiving ----------------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        protocol = self.protocol
        self.request = request
        try:
            path = urlsplit(request.path).path
        except ValueError:  # a target such as "//[/ws" (no URL) is taken as-is by the HTTP parser
            path = None
        if path != self.listener.path:
            response = protocol.reject(404, f"not found: the websocket path is {self.listener.path}\n")
        else:
            response = protocol.accept(request)
        protocol.send_response(response)
        self.flush_protocol()
        if protocol.state is not OPEN:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.subprotocol = protocol.subprotocol
        self._opened = True
        self.listener.handler.opened(self)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is TEXT or opcode is BINARY:
            if frame.fin:
                self._message(frame.data, opcode is BINARY)
            else:
                self._parts = [frame.data]
                self._parts_binary = opcode is BINARY
        elif opcode is CONT:
            self._parts.append(frame.data)
            if frame.fin:
                data, self._parts = b"".join(self._parts), []
                self._message(data, self._parts_binary)
        # ping, pong and close frames are answered by the protocol itself

    def _message(self, data: bytes, binary: bool) -> None:
        if self._closing:
            return  # we sent our close frame: nothing more is answered
        if self._held or self._inbox:
            if not (self._reading and self._held) or self._unjudged:
                # Judged in its turn; so is every later one while an earlier one waits unjudged, so
                # the rate limits see the messages in the order they were sent.
                self._queue(data, binary, None)
                return
            if time.perf_counter() - self._turn_started > self.listener.turn:
                # This read's turn is over: the rest of it waits to be judged in its turn, and the
                # socket is not read again until the answer in flight is sent.
                self._split = True
                self._queue(data, binary, None)
                self._reading = False
                self._read_as_held()
                return
            early = self.listener.handler.arrived(self, data, binary)
            if not self._closing:
                self._queue(data, binary, early)
                self._read_as_held()  # past the byte bound, the client waits on TCP meanwhile
            return
        if time.perf_counter() - self._turn_started > self.listener.turn:
            # The rest of this read waits for the next turn. It is bounded by the read itself
            # (reading stops meanwhile), and each of its messages still meets the rate limit.
            self._split = True
            self._queue(data, binary, None)
            self.hold()
            asyncio.get_running_loop().call_soon(self.release)
            return
        self.listener.handler.received(self, data, binary, None)

    def _queue(self, data: bytes, binary: bool, early: Any) -> None:
        if len(self._inbox) >= self.listener.max_inbox and not self._split:
            # A client that pipelines past its rate limit, or that keeps sending within it while
            # one answer waits longer than --ws-inbox messages take at that rate.
            self.close(4429, "message flood")
            return
        self._inbox.append((data, binary, early))
        self._inbox_bytes += len(data)
        if early is None:
            self._unjudged += 1

    def defer(self, data: bytes, binary: bool, early: Any) -> None:
        """Put a message handed over just now back in front of the inbox, and hold without reading."""
        self._inbox.appendleft((data, binary, early))
        self._inbox_bytes += len(data)
        if early is None:
            self._unjudged += 1
        self.hold()

    @property
    def paused(self) -> bool:
        """Reading the socket is paused (bytes the client sent, a pong say, may wait unread)."""
        return self._paused

    def hold(self, reading: bool = False) -> None:
        """Hand over no more messages until ``release``. ``reading``: keep reading the socket and
        show each message to the handler as it arrives (an answer in flight); otherwise stop reading
        (a client that does not read, a burst whose turn is over). Holding without reading while
        held with reading stops reading too."""
        self._reading = reading and (self._reading or not self._held)
        self._held = True
        self._read_as_held()

    def _read_as_held(self) -> None:
        """Pause or resume reading the socket as the hold and the inbox's byte bound say."""
        pause = self._held and (not self._reading or self._inbox_bytes >= self.listener.max_inbox_bytes)
        if pause is not self._paused:
            self._paused = pause
            if not self.transport.is_closing():
                (self.transport.pause_reading if pause else self.transport.resume_reading)()

    def release(self) -> None:
        """Hand over the messages that waited, then read the socket (unless held again without reading)."""
        if not self._held:
            return
        self._held = False
        self._reading = False
        handler = self.listener.handler
        self.cork()
        self._turn_started = time.perf_counter()
        try:
            inbox = self._inbox
            # Once a close frame went out (ours, or the protocol's answer to a bad frame or to the
            # client's close), nothing that waited is acted on: its answer could not be sent.
            while inbox and not self._held and self.protocol.close_sent is None:
                if time.perf_counter() - self._turn_started > self.listener.turn:
                    self.hold()
                    asyncio.get_running_loop().call_soon(self.release)
                    return
                data, binary, early = inbox.popleft()
                self._inbox_bytes -= len(data)
                if early is None:
                    self._unjudged -= 1
                handler.received(self, data, binary, early)
        finally:
            self._read_as_held()
            self.uncork()

    # -- sending ------------------------------------------------------------------------------

    def cork(self) -> None:
        """Hold back what is written until ``uncork``, then send it in one write (a reply and the
        events it made, say). The callbacks that hand over messages cork around them already."""
        if self._out is None:
            self._out = []
            self._out_bytes = 0

    def uncork(self) -> None:
        out, self._out = self._out, None
        self._out_bytes = 0
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if self._eof:
            self._eof = False
            self.transport.close()

    def write(self, data: bytes) -> None:
        """Write wire bytes (whole frames); while messages are handled they go out together."""
        if self._out is not None:
            self._out.append(data)
            self._out_bytes += len(data)
        else:
            self.transport.write(data)

    def buffered(self) -> int:
        """Bytes written to this connection that the client has not taken yet."""
        return self.transport.get_write_buffer_size() + self._out_bytes

    def flush_protocol(self) -> None:
        """Write what the sans-I/O protocol queued (frames, the handshake response, end of stream)."""
        for data in self.protocol.data_to_send():
            if data is SEND_EOF or not data:
                # Closing waits for the write buffer to drain: a client that stopped reading (then
                # sent a close frame, a bad frame or its end of stream) is cut after the close timeout.
                if self._timer is None and self._opened:
                    self._timer = asyncio.get_running_loop().call_later(self.listener.close_timeout, self.abort)
                if self._out is not None:
                    self._eof = True
                else:
                    self.transport.close()
            elif data[0] == PONG_HEAD and self.buffered() + len(data) > self.listener.max_buffer:
                # Pings are no messages and have no rate limit: a client that sends them and does
                # not read would otherwise make us buffer pongs without end (RFC 6455 5.5.3 lets an
                # endpoint answer only the latest of several pings; this one reads its answers late).
                continue
            else:
                self.write(data)

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake: the close frame goes after what is already buffered (a client
        that catches up reads it); the connection is cut after the close timeout either way."""
        protocol = self.protocol
        if protocol.state is not OPEN:
            return
        protocol.send_close(code, reason)
        self.flush_protocol()
        # Read again, to see the client's answer (or its end of stream) instead of waiting for the timeout.
        self._closing = True
        self._inbox.clear()
        self._inbox_bytes = 0
        self._unjudged = 0
        self._held = self._reading = False
        self._read_as_held()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.listener.close_timeout, self.abort)

    def abort(self) -> None:
        self._timer = None
        self.transport.abort()


def split_frames(data: bytes, max_size: int, in_fragment: bool) -> tuple[list[tuple[bytes, bool] | bytes], bytes]:
    """Split client bytes at frame boundaries: whole unfragmented text or binary frames become
    ``(payload, binary)`` messages read here; every other whole frame (control frames, fragments,
    anything the protocol must refuse) stays ``bytes`` for the sans-I/O protocol. Returns the items
    in order and the start of an incomplete last frame.

    The protocol's generator-based parser costs a few microseconds per frame, a tenth of a
    tap's whole cost; this reads what shoppers' clients send in a plain loop. The protocol still
    sees every frame it must judge, and only whole ones, so its state is always at a boundary.
    ``in_fragment``: a fragmented message is in progress (its next frames go to the protocol)."""
    items: list[tuple[bytes, bool] | bytes] = []
    end = len(data)
    at = 0
    while end - at >= 2:
        first, second = data[at], data[at + 1]
        size = second & 0x7F
        head = 2
        if size == 126:
            if end - at < 4:
                break
            size, head = (data[at + 2] << 8) | data[at + 3], 4
        elif size == 127:
            if end - at < 10:
                break
            size, head = int.from_bytes(data[at + 2:at + 10], "big"), 10
        if size > max_size or not second & 0x80:
            items.append(data[at:])  # too big or unmasked: the protocol closes the connection
            return items, b""
        total = head + 4 + size
        if end - at < total:
            break
        if (first == 0x81 or first == 0x82) and not in_fragment:  # FIN, no RSV bit, text or binary
            items.append((apply_mask(data[at + head + 4:at + total], data[at + head:at + head + 4]), first == 0x82))
        else:
            if first & 0x0F in (0x0, 0x1, 0x2):
                in_fragment = not first & 0x80
            items.append(data[at:at + total])
        at += total
    return items, data[at:] if at < end else b""


def _drop_tracebacks(*errors: BaseException | None) -> None:
    """Clear the tracebacks of these exceptions and of their causes and contexts.

    A connection that ended without a close frame (a dropped viewer) keeps the parser's error,
    whose traceback holds a frame that holds the protocol: a cycle that would wait for a full
    collection, which takes most of a second with 10,000 viewers connected (engine.gcpolicy)."""
    stack = [error for error in errors if error is not None]
    seen: set[int] = set()
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        stack += [e for e in (error.__cause__, error.__context__) if e is not None]

