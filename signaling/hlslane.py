"""The HLS lane: a player's keep-alive connection served without aiohttp's request machinery.

An LL-HLS player asks a node for about four small things a second (a blocking playlist reload,
then the part it names), and a node's HLS audience is counted in thousands. Through aiohttp, the
request path (its parser objects, the middlewares, the router, a response object, the writer)
costs several times the answer itself (bench/RESULTS.md, LL-HLS). So a connection whose first
request is ``GET /hls/...`` is served here: each head is parsed from the bytes, answered by the
same ``HlsEndpoints`` as aiohttp's HLS routes (signaling/hls.py), and written with one
``writelines``; an answer that needs no waiting runs no task. The first request the lane does not
take (another method or path, a body, an ``Upgrade``, a head it cannot read) hands the connection
to aiohttp for good, with every byte not yet answered, so a browser that reuses a player's
connection for the API is served as before, and aiohttp gives malformed heads its own answers.

Bounds (per connection): the lane reads heads of at most ``MAX_HEAD`` bytes (a longer one goes
to aiohttp); requests are answered one at a time and in order, ``BATCH`` at most before the loop
serves other callbacks, and bytes received meanwhile are kept up to ``MAX_PENDING`` (then reading
pauses); nothing more is answered while the transport's write buffer is over its high-water mark
(a player that does not read gets nothing more queued); a connection idle between requests, or
whose answers wait unread, for the keep-alive timeout is closed. The per-address cap and the
request-head deadline stay with ``GuardedProtocol`` (signaling/guard.py), which the lane tells
where each head starts and ends (a head that waits its turn behind unread answers is not late).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qsl, unquote

from aiohttp.tcp_helpers import tcp_keepalive

from engine.errors import CodedError
from signaling.access import carried_token
from signaling.hls import HlsAnswer, HlsAsk, HlsEndpoints
from signaling.http import coded_status, error_body

log = logging.getLogger(__name__)

#: Bytes of a request head the lane reads; a longer head goes to aiohttp, with its own limits.
MAX_HEAD = 16 * 1024
#: Bytes kept from a client while an earlier request is answered; past it, reading pauses.
MAX_PENDING = 64 * 1024
#: Requests answered in one go before the lane lets the event loop serve others (one client's
#: pipelined requests must not hold the loop).
BATCH = 16
_PREFIX = b"GET /hls/"
_HEAD_END = b"\r\n\r\n"
#: Request headers that mean the request is not a plain GET this lane answers.
_NOT_OURS = frozenset((b"content-length", b"transfer-encoding", b"upgrade", b"expect"))
#: A field name (RFC 9110 token); a head with anything else goes to aiohttp, which refuses it.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Control characters: none may appear in a request line, only HTAB in a field line.
_CONTROL_LINE = re.compile(rb"[\x00-\x1f\x7f]")
_CONTROL_FIELD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class LaneHost(Protocol):
    """The connection's protocol (``GuardedProtocol``), told what the lane reads."""

    def request_started(self) -> None:
        """A whole request head was read: its deadline is met."""

    def head_started(self) -> None:
        """Part of a request head is here and the lane waits for the rest: its deadline runs."""

    def hand_over(self, data: bytes) -> None:
        """aiohttp serves the connection from now on, starting with ``data``."""


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True).encode()
        return self._value


class HlsLanes:
    """Makes each new connection's lane and closes the open ones when the server stops."""

    def __init__(self, endpoints: HlsEndpoints, keepalive: float, access_log: logging.Logger | None) -> None:
        self.endpoints = endpoints
        self.keepalive = keepalive
        self.access_log = access_log
        self.date = _Date()
        self.open: set[HlsLane] = set()

    def lane(self, transport: asyncio.Transport, host: LaneHost) -> HlsLane:
        lane = HlsLane(self, transport, host)
        self.open.add(lane)
        return lane

    def close(self) -> None:
        for lane in list(self.open):
            lane.close()


class HlsLane:
    """One connection, served by the lane until it hands it to aiohttp (see the module docstring)."""

    def __init__(self, lanes: HlsLanes, transport: asyncio.Transport, host: LaneHost) -> None:
        self._lanes = lanes
        self._transport = transport
        self._host = host
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer searched for a head's end already
        self._task: asyncio.Future[HlsAnswer] | None = None  # the answer being waited for
        self._asked: tuple[str, float, bool] | None = None  # path, start time, keep-alive of that request
        self._paused_writing = False
        self._paused_reading = False
        self._resumed: asyncio.Handle | None = None  # the rest of a long batch, after other callbacks
        self._closing = False
        self._eof = False  # the client sent all it will
        self._active = self._wrote = self._loop.time()  # the last bytes received; the last answers taken
        self._idle = self._loop.call_later(lanes.keepalive, self._idle_check)
        tcp_keepalive(transport)  # as aiohttp does for its own connections

    # --- from the transport, through the host ---

    def received(self, data: bytes) -> None:
        self._active = self._loop.time()
        self._buffer += data
        if self._resumed is None:
            self._serve()
        else:
            self._limit_reading()

    def eof(self) -> bool:
        """The client sent all it will: answer every request it sent, then close."""
        self._eof = True
        self._close_if_done()
        return True  # the transport stays open for the answers; ``_close_if_done`` closes it

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wrote = self._loop.time()
        if self._resumed is None:
            self._serve()

    def lost(self) -> None:
        self._lanes.open.discard(self)
        self._closing = True
        self._idle.cancel()
        if self._resumed is not None:
            self._resumed.cancel()
            self._resumed = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def close(self) -> None:
        self._closing = True
        self._transport.close()

    # --- requests ---

    def _serve(self) -> None:
        """Answer the requests in the buffer, one at a time, while the client reads; at most
        ``BATCH`` of them before the loop serves others."""
        self._resumed = None
        buffer = self._buffer
        answered = 0
        while (self._task is None and not self._paused_writing and not self._closing and buffer
               and not self._transport.is_closing()):
            if answered == BATCH:
                self._resumed = self._loop.call_soon(self._serve)
                break
            if not _PREFIX.startswith(buffer[:len(_PREFIX)]):
                self._hand_over()
                return
            end = buffer.find(_HEAD_END, max(0, self._scanned - 3), MAX_HEAD + 4)
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._hand_over()  # aiohttp reads longer heads, with its own limits
                    return
                self._scanned = len(buffer)
                self._host.head_started()
                break
            ask = self._read_head(bytes(buffer[:end]))
            if ask is None:
                self._hand_over()
                return
            del buffer[:end + len(_HEAD_END)]
            self._scanned = 0
            self._host.request_started()
            self._answer(ask)
            answered += 1
        if not self._closing:
            self._limit_reading()
            self._close_if_done()

    def _close_if_done(self) -> None:
        """After the client's end of input, close once its last whole request is answered."""
        if (self._eof and self._task is None and self._resumed is None and not self._paused_writing
                and not self._closing and self._buffer.find(_HEAD_END) < 0):
            self.close()

    def _limit_reading(self) -> None:
        """Pause reading while more than ``MAX_PENDING`` bytes wait to be answered."""
        if len(self._buffer) > MAX_PENDING and not self._paused_reading:
            self._paused_reading = True
            self._transport.pause_reading()
        elif self._paused_reading and len(self._buffer) <= MAX_PENDING:
            self._paused_reading = False
            self._transport.resume_reading()

    def _read_head(self, head: bytes) -> HlsAsk | None:
        """The request, when it is one this lane answers (a plain, well-formed GET of an HLS file);
        None otherwise, and aiohttp reads it (and answers a malformed one)."""
        lines = head.split(b"\r\n")
        request_line = lines[0]
        if request_line.count(b" ") != 2 or _CONTROL_LINE.search(request_line):
            return None
        method, target, version = request_line.split(b" ")
        if method != b"GET" or version not in (b"HTTP/1.1", b"HTTP/1.0"):
            return None
        close = keep_alive = False
        hosts = 0
        authorization: bytes | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            name = name.lower()
            if not colon or not _TOKEN.fullmatch(name) or _CONTROL_FIELD.search(value) or name in _NOT_OURS:
                return None  # obs-fold, a malformed field, or a request with more than a head
            if name == b"host":
                hosts += 1
            elif name == b"connection":
                tokens = value.lower()
                close = close or b"close" in tokens
                keep_alive = keep_alive or b"keep-alive" in tokens
            elif name == b"authorization" and authorization is None:
                authorization = value.strip()
        if version == b"HTTP/1.1" and hosts != 1:
            return None
        path, _, query = target.partition(b"#")[0].partition(b"?")
        parts = path.split(b"/")
        if len(parts) != 4 or not parts[2] or not parts[3]:
            return None
        try:
            room = unquote(parts[2].decode("ascii"), errors="strict")
            file = unquote(parts[3].decode("ascii"), errors="strict")
            pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            return None
        asked: dict[str, str] = {}
        for key, value in pairs:
            asked.setdefault(key, value)
        persistent = not close and (version == b"HTTP/1.1" or keep_alive)
        self._asked = (f"/hls/{room}/{file}", self._loop.time(), persistent)
        token = carried_token((authorization or b"").decode("latin-1"), asked)
        return HlsAsk(room, None if file == "index.m3u8" else file, asked, token)

    def _answer(self, ask: HlsAsk) -> None:
        try:
            result = self._lanes.endpoints.answer(ask)
        except Exception as exc:  # noqa: BLE001 (every refusal and failure is answered, as errors_as_json does)
            self._refused(exc)
            return
        if isinstance(result, HlsAnswer):
            self._respond(result)
            return
        self._task = asyncio.ensure_future(result)
        self._task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Future[HlsAnswer]) -> None:
        if task is not self._task:
            return  # the connection was lost meanwhile
        self._task = None
        if task.cancelled():  # by the loop's shutdown: nothing more is answered here
            self.close()
            return
        exc = task.exception()
        if exc is not None:
            self._refused(exc)
        else:
            self._respond(task.result())
        if self._resumed is None:
            self._serve()

    def _refused(self, exc: BaseException) -> None:
        if isinstance(exc, CodedError):
            self._write(coded_status(exc), b"application/json", error_body(exc.code, exc.message), None,
                        getattr(exc, "headers", None))
            return
        assert self._asked is not None
        log.error("request failed: GET %s", self._asked[0], exc_info=exc)
        self._write(500, b"application/json", error_body("internal", "the server failed on this request"), None, None)

    def _respond(self, answer: HlsAnswer) -> None:
        self._write(200, answer.content_type.encode(), answer.body, answer.cache_control.encode(), None)

    def _write(self, status: int, content_type: bytes, body: bytes | memoryview, cache_control: bytes | None,
               headers: dict[str, str] | None) -> None:
        assert self._asked is not None
        path, started, keep_alive = self._asked
        keep_alive = keep_alive and not self._closing
        head = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
                % (status, HTTPStatus(status).phrase.encode(), content_type, len(body), self._lanes.date())]
        if cache_control is not None:
            head.append(b"Cache-Control: %s\r\n" % cache_control)
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        self._transport.writelines((b"".join(head), body))
        self._active = self._wrote = self._loop.time()
        if self._lanes.access_log is not None:
            peer = self._transport.get_extra_info("peername")
            self._lanes.access_log.info('%s "%s %s" %d %d %.1f ms', peer[0] if peer else "", "GET", path, status,
                                        len(body), (self._active - started) * 1000)
        if not keep_alive:
            self.close()

    def _hand_over(self) -> None:
        self._lanes.open.discard(self)
        self._idle.cancel()
        if self._paused_reading:
            self._paused_reading = False
            self._transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        self._host.hand_over(data)

    def _idle_check(self) -> None:
        """Close a connection idle for the keep-alive timeout (checked lazily: one timer per connection).
        A connection holding part of a head is the head deadline's (``GuardedProtocol``), not idle;
        one whose answers have not been taken for as long is, whatever it still sends, and is cut
        (its unsent answers would otherwise hold the socket until it reads)."""
        now, keepalive = self._loop.time(), self._lanes.keepalive
        if self._paused_writing and now - self._wrote >= keepalive:
            self._closing = True
            self._transport.abort()
            return
        idle = now - self._active
        if self._task is None and not self._buffer and idle >= keepalive:
            self.close()
            return
        since = self._wrote if self._paused_writing else self._active
        self._idle = self._loop.call_later(max(keepalive - (now - since), 0.25), self._idle_check)
