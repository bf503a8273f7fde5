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

Bounds (per connection): a request head is at most ``MAX_HEAD`` bytes (else 431 and close);
requests are answered one at a time and in order, and bytes received meanwhile are kept up to
``MAX_PENDING`` (then reading pauses); nothing more is answered while the transport's write buffer
is over its high-water mark (a player that does not read gets nothing more queued); a connection
idle between requests for the keep-alive timeout is closed, as aiohttp closes its own. The
per-address cap and the request-head deadline stay with ``GuardedProtocol`` (signaling/guard.py),
which the lane tells where each request starts and ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from typing import Protocol
from urllib.parse import parse_qsl, unquote

from engine.errors import CodedError
from signaling.access import carried_token
from signaling.hls import HlsAnswer, HlsAsk, HlsEndpoints
from signaling.http import coded_status, error_body

log = logging.getLogger(__name__)

#: Bytes a request head may take (aiohttp allows 8190 per line); past it, 431 and the connection closes.
MAX_HEAD = 16 * 1024
#: Bytes kept from a client while an earlier request is answered; past it, reading pauses.
MAX_PENDING = 64 * 1024
_PREFIX = b"GET /hls/"
_HEAD_END = b"\r\n\r\n"
#: Request headers that mean the request is not a plain GET this lane answers.
_NOT_OURS = frozenset((b"content-length", b"transfer-encoding", b"upgrade", b"expect"))
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class LaneHost(Protocol):
    """The connection's protocol (``GuardedProtocol``), told what the lane reads."""

    def request_started(self) -> None:
        """A whole request head was read: its deadline is met."""

    def next_request(self, pending: bool = False) -> None:
        """The request was answered: the next bytes start a new head (``pending``: some came already)."""

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
        self._task: asyncio.Future[HlsAnswer] | None = None  # the answer being waited for
        self._asked: tuple[str, float, bool] | None = None  # path, start time, keep-alive of that request
        self._paused_writing = False
        self._paused_reading = False
        self._closing = False
        self._active = self._loop.time()
        self._idle = self._loop.call_later(lanes.keepalive, self._idle_check)

    # --- from the transport, through the host ---

    def received(self, data: bytes) -> None:
        self._active = self._loop.time()
        self._buffer += data
        self._serve()

    def eof(self) -> bool:
        """The client sent all it will: answer what is in progress, then close."""
        self._closing = True
        if self._task is None:
            self._transport.close()
        return self._task is not None

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._serve()

    def lost(self) -> None:
        self._lanes.open.discard(self)
        self._closing = True
        self._idle.cancel()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def close(self) -> None:
        self._transport.close()

    # --- requests ---

    def _serve(self) -> None:
        """Answer the requests in the buffer, one at a time, while the client reads."""
        buffer = self._buffer
        while self._task is None and not self._paused_writing and not self._closing and buffer:
            if not _PREFIX.startswith(buffer[:len(_PREFIX)]):
                self._hand_over()
                return
            end = buffer.find(_HEAD_END)
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._refuse(431, "bad_request", f"a request head is at most {MAX_HEAD} bytes here")
                break
            if end > MAX_HEAD:
                self._refuse(431, "bad_request", f"a request head is at most {MAX_HEAD} bytes here")
                return
            ask = self._read_head(bytes(buffer[:end]))
            if ask is None:
                self._hand_over()
                return
            del buffer[:end + len(_HEAD_END)]
            self._host.request_started()
            self._answer(ask)
        if self._closing:
            return
        if len(buffer) > MAX_PENDING and not self._paused_reading:
            self._paused_reading = True
            self._transport.pause_reading()
        elif self._paused_reading and len(buffer) <= MAX_PENDING:
            self._paused_reading = False
            self._transport.resume_reading()

    def _read_head(self, head: bytes) -> HlsAsk | None:
        """The request, when it is one this lane answers (a plain GET of an HLS file); None otherwise."""
        lines = head.split(b"\r\n")
        method, target, version = (lines[0].split(b" ") + [b"", b""])[:3]
        if method != b"GET" or version not in (b"HTTP/1.1", b"HTTP/1.0") or lines[0].count(b" ") != 2:
            return None
        keep_alive = version == b"HTTP/1.1"
        authorization = ""
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            name = name.lower()
            if not colon or not name or name != name.strip() or name in _NOT_OURS:
                return None  # obs-fold, a malformed field, or a request with more than a head
            if name == b"connection":
                tokens = value.lower()
                keep_alive = b"close" not in tokens and (keep_alive or b"keep-alive" in tokens)
            elif name == b"authorization":
                authorization = value.strip().decode("latin-1")
        path, _, query = target.partition(b"?")
        parts = path.split(b"/")
        if len(parts) != 4 or not parts[2] or not parts[3]:
            return None
        try:
            room, file = unquote(parts[2].decode("ascii")), unquote(parts[3].decode("ascii"))
            pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True)
        except UnicodeDecodeError:
            return None
        asked: dict[str, str] = {}
        for key, value in pairs:
            asked.setdefault(key, value)
        self._asked = (path.decode("ascii"), self._loop.time(), keep_alive)
        return HlsAsk(room, None if file == "index.m3u8" else file, asked, carried_token(authorization, asked))

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
        exc = task.exception()
        if exc is not None:
            self._refused(exc)
        else:
            self._respond(task.result())
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
                % (status, _REASONS.get(status, "Error").encode(), content_type, len(body), self._lanes.date())]
        if cache_control is not None:
            head.append(b"Cache-Control: %s\r\n" % cache_control)
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        self._transport.writelines((b"".join(head), body))
        self._active = self._loop.time()
        if self._lanes.access_log is not None:
            peer = self._transport.get_extra_info("peername")
            self._lanes.access_log.info('%s "%s %s" %d %d %.1f ms', peer[0] if peer else "", "GET", path, status,
                                        len(body), (self._active - started) * 1000)
        self._host.next_request(bool(self._buffer))
        if not keep_alive:
            self._closing = True
            self._transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """A request this lane cannot read at all: answered, and the connection closed."""
        self._asked = ("", self._loop.time(), False)
        self._write(status, b"application/json", error_body(code, message), None, None)

    def _hand_over(self) -> None:
        self._lanes.open.discard(self)
        self._idle.cancel()
        if self._paused_reading:
            self._paused_reading = False
            self._transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        self._host.hand_over(data)

    def _idle_check(self) -> None:
        """Close a connection idle for the keep-alive timeout (checked lazily: one timer per connection)."""
        idle = self._loop.time() - self._active
        if self._task is None and not self._buffer and idle >= self._lanes.keepalive:
            self._transport.close()
            return
        wait = self._lanes.keepalive - idle if idle < self._lanes.keepalive else self._lanes.keepalive
        self._idle = self._loop.call_later(wait, self._idle_check)
