"""Connection-level guards of both ports: a cap per client address and a deadline for every request head.

An HTTP server that waits as long as a client likes for a request's headers, and accepts as many
connections from one address as it opens, hands its file descriptors to anyone who trickles
half-requests (slowloris). ``AddressGate`` counts open connections per address; ``GuardedSite``
serves aiohttp through a thin protocol wrapper that refuses an address past its cap and closes a
connection whose request head is not complete in time: the first one counted from the connection,
each later one on a kept-alive connection from its first byte (``next_head_deadline`` tells the
wrapper where a request ended). Both answer with a short HTTP error (JSON body,
``Connection: close``) so a real client learns why. The idle time between requests is bounded by
the keep-alive timeout the runner is given; request bodies by ``body_deadline``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import orjson
from aiohttp import web

from engine import metrics
from engine.errors import CodedError

if TYPE_CHECKING:
    from signaling.hlslane import HlsLane, HlsLanes

HEAD_END = b"\r\n\r\n"


class AddressGate:
    """Open connections per client address, refused past ``cap``.

    The table holds only addresses with an open connection, so it is bounded by the connections
    the process has open."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if count >= self.cap:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)

    def __len__(self) -> int:
        return len(self._open)


def http_error(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, written before any request is read."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else ""


class GuardedProtocol(asyncio.Protocol):
    """Wraps one aiohttp request handler: enforces the address cap and the request-head deadlines.

    With ``lanes``, the connection starts in the HLS lane (signaling/hlslane.py), and aiohttp's
    handler sees the connection only once the lane hands it over."""

    def __init__(self, inner: asyncio.Protocol, gate: AddressGate, header_timeout: float,
                 lanes: HlsLanes | None = None) -> None:
        self._inner = inner
        self._lanes = lanes
        self._lane: HlsLane | None = None
        self._gate = gate
        self._timeout = header_timeout
        self._address: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None
        self._between = False  # a request was answered; the next byte starts the next head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        address = peer_address(transport)
        admitted = self._gate.admit(address)
        if admitted and self._lanes is not None:
            self._lane = self._lanes.lane(self._transport, self)
        else:
            self._inner.connection_made(transport)
        if not admitted:
            metrics.REFUSED_CONNECTIONS.labels("http", "per_ip").inc()
            self._refuse(429, "too_many_connections",
                         f"at most {self._gate.cap} connections per client address")
            return
        self._address = address
        self._deadline = asyncio.get_running_loop().call_later(self._timeout, self._too_slow)

    def request_started(self) -> None:
        """aiohttp parsed a whole head and handles it (also one that came pipelined): no deadline."""
        self._between = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def next_request(self) -> None:
        """The request in progress has been handled: the next bytes are a new request head, whose
        deadline starts with its first byte (the idle time before it is the keep-alive timeout's)."""
        if self._address is not None and self._deadline is None:
            self._between = True
            self._tail = b""

    def head_started(self) -> None:
        """The HLS lane holds part of a request head: its deadline runs (the lane knows where heads
        start and end, so its connections skip the byte watch of ``data_received``)."""
        if self._address is not None and self._deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(self._timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self._lane is not None:
            self._lane.received(data)
            return
        if self._between and data:
            self._between = False
            self._deadline = asyncio.get_running_loop().call_later(self._timeout, self._too_slow)
        if self._deadline is not None:
            window = self._tail + data
            if HEAD_END in window:
                self._deadline.cancel()
                self._deadline = None
            else:
                self._tail = window[-3:]
        self._inner.data_received(data)

    def hand_over(self, data: bytes) -> None:
        """The HLS lane lets go of the connection: aiohttp's handler takes it, from ``data`` on (the
        start of a request head, whose deadline runs from now if it was not running already)."""
        self._lane = None
        self._between = False
        self._tail = data[-3:]
        if data:
            self.head_started()
        assert self._transport is not None
        self._inner.connection_made(self._transport)
        if data:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._lane.eof() if self._lane is not None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._lane is not None:
            self._lane.pause_writing()
        else:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._lane is not None:
            self._lane.resume_writing()
        else:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._address is not None:
            self._gate.release(self._address)
            self._address = None
        if self._lane is not None:
            self._lane.lost()
            self._lane = None
        else:
            self._inner.connection_lost(exc)

    def _too_slow(self) -> None:
        self._deadline = None
        metrics.REFUSED_CONNECTIONS.labels("http", "header_timeout").inc()
        self._refuse(408, "request_timeout", f"send the request headers within {self._timeout:g} s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        assert self._transport is not None
        if self._transport.get_write_buffer_size() > 0:
            self._transport.abort()  # it does not read its answers: a close would wait on it
        elif not self._transport.is_closing():
            self._transport.write(http_error(status, code, message))
            self._transport.close()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through ``GuardedProtocol``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: AddressGate,
                 header_timeout: float, lanes: HlsLanes | None = None) -> None:
        super().__init__(runner, host, port)
        self._gate = gate
        self._header_timeout = header_timeout
        self._lanes = lanes

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def guarded() -> GuardedProtocol:
            return GuardedProtocol(server(), self._gate, self._header_timeout, self._lanes)

        self._server = await asyncio.get_running_loop().create_server(
            guarded, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address)

    async def stop(self) -> None:
        """Stop listening; connections in the HLS lane close too (aiohttp closes its own)."""
        await super().stop()
        if self._lanes is not None:
            self._lanes.close()


class BodyTimeout(CodedError):
    """A request body that did not arrive in time; answered 408 and the connection closed."""

    status = 408
    headers = {"Connection": "close"}

    def __init__(self, timeout: float) -> None:
        super().__init__("request_timeout", f"send the request body within {timeout:g} s")


def body_deadline(timeout: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: a request's body must arrive within ``timeout`` seconds (408 otherwise).

    The body is read here under the deadline (up to the app's ``client_max_size``) and kept by
    aiohttp, so handlers read it from memory."""

    @web.middleware
    async def deadline(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(timeout):
                    await request.read()
            except TimeoutError:
                metrics.REFUSED_CONNECTIONS.labels("http", "body_timeout").inc()
                raise BodyTimeout(timeout) from None
        return await handler(request)

    return deadline


@web.middleware
async def next_head_deadline(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Middleware (outermost): once a request is handled, its connection's next request head gets
    the same deadline as the first. The handler has read the body by then (``body_deadline``), and
    a client that waits for the answer sends the next request after it, so the next bytes the
    connection receives start a new head."""
    transport = request.transport
    guard = None if transport is None else transport.get_protocol()
    if not isinstance(guard, GuardedProtocol):
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.next_request()
