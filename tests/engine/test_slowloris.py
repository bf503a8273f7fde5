"""Slowloris on both ports: half-sent requests are cut after the read timeout, and one client address
cannot hold more than its share of connections, while others are still served."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from engine.app import App
from engine.config import Config
from tests.conftest import token
from tests.engine.rawws import raw_socket, upgrade, ws_client
from tests.looplag import MAX_STALL, loop_lag

PER_IP = 5
TIMEOUT = 1.0


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[App]:
    app = App(Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                     max_http_per_ip=PER_IP, max_ws_per_ip=PER_IP, http_read_timeout=TIMEOUT,
                     ws_handshake_timeout=TIMEOUT))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def _trickle(sock: socket.socket, first: bytes, stop: asyncio.Event) -> None:
    """Send ``first``, then one more header byte every 100 ms: never a complete request."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        await loop.sock_sendall(sock, first)
        while not stop.is_set():
            await asyncio.sleep(0.1)
            await loop.sock_sendall(sock, b"a")


async def _answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    loop = asyncio.get_running_loop()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout):
            data += chunk
    return data


async def _get(app: App, source: str, path: str = "/healthz") -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (aiohttp.ClientSession(connector=connector) as http,
                http.get(f"http://127.0.0.1:{app.http_port}{path}") as response):
        return response.status


async def test_half_sent_http_requests_are_cut_and_capped_per_address(guarded: App) -> None:
    app = guarded
    stop = asyncio.Event()
    async with loop_lag() as lag:
        started = time.monotonic()
        holders = [await raw_socket(app.http_port) for _ in range(PER_IP)]
        trickles = [asyncio.create_task(_trickle(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", stop))
                    for s in holders[:-1]]
        # One holder sends its headers but only part of the body it announced.
        trickles.append(asyncio.create_task(_trickle(holders[-1], (
            b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\": "), stop)))
        await asyncio.sleep(0.3)
        # The address has its maximum: one more is answered 429 at once and closed.
        extra = await raw_socket(app.http_port)
        refused = await _answer(extra)
        assert refused.startswith(b"HTTP/1.1 429 ") and b'"too_many_connections"' in refused
        extra.close()
        # Another address is served meanwhile.
        assert await _get(app, "127.0.0.2") == 200
        # The half-sent requests are answered 408 and closed after the read timeout.
        answers = await asyncio.gather(*[_answer(s) for s in holders])
        assert time.monotonic() - started < 10 * TIMEOUT
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
            assert b'"request_timeout"' in answer
        stop.set()
        await asyncio.gather(*trickles)
        for sock in holders:
            sock.close()
        # The address's slots are free again, and the per-address table is empty once all are closed.
        assert await _get(app, "127.0.0.1") == 200
    assert lag.worst < MAX_STALL, lag.worst
    for _ in range(100):
        if not len(app.http_gate):
            break
        await asyncio.sleep(0.02)
    assert len(app.http_gate) == 0


async def test_websocket_port_caps_connections_per_address_and_times_out_handshakes(guarded: App) -> None:
    app = guarded
    loop = asyncio.get_running_loop()
    async with loop_lag() as lag:
        # Half-sent upgrade requests are closed after the handshake timeout.
        stalls = [await raw_socket(app.ws_port) for _ in range(2)]
        for sock in stalls:
            await loop.sock_sendall(sock, upgrade(f"token={token(app)}")[:40])
        viewers = [await ws_client(app.ws_port, token(app, sub=f"v{i}")) for i in range(PER_IP - 2)]
        # The address has its maximum (3 viewers, 2 stalled handshakes): one more is refused at once.
        extra = await raw_socket(app.ws_port)
        await loop.sock_sendall(extra, upgrade(f"token={token(app)}"))
        refused = await _answer(extra)
        assert refused.startswith(b"HTTP/1.1 429 ") and b'"too_many_connections"' in refused
        extra.close()
        # Another address still joins.
        other = await ws_client(app.ws_port, token(app, sub="other"), source="127.0.0.2")
        for sock in stalls:
            assert await _answer(sock, timeout=10 * TIMEOUT) == b""
            sock.close()
        # With the stalled handshakes gone, the address may connect again.
        again = await ws_client(app.ws_port, token(app, sub="again"))
    assert lag.worst < MAX_STALL, lag.worst
    for sock in (*viewers, other, again):
        sock.close()
    for _ in range(100):
        if not len(app.channel.listener.gate):
            break
        await asyncio.sleep(0.02)
    assert len(app.channel.listener.gate) == 0


async def _response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One whole response with a Content-Length body, read off a kept-alive connection."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while b"\r\n\r\n" not in data:
            data += await loop.sock_recv(sock, 65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += await loop.sock_recv(sock, 65536)
    return head


async def test_a_trickled_later_request_on_a_kept_alive_connection_is_cut(guarded: App) -> None:
    """The read timeout bounds every request's headers, not only the first request's: a client that
    trickles its second request one header line at a time is answered 408 and closed."""
    loop = asyncio.get_running_loop()
    sock = await raw_socket(guarded.http_port)
    try:
        await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in await _response(sock)
        stop = asyncio.Event()
        trickle = asyncio.create_task(_trickle(sock, b"GET /healthz HTTP/1.1\r\nX-a: ", stop))
        started = time.monotonic()
        answer = await _answer(sock, timeout=TIMEOUT * 5)
        stop.set()
        await trickle
        assert b" 408 " in answer.split(b"\r\n")[0] and b"request_timeout" in answer
        assert time.monotonic() - started < TIMEOUT * 5
    finally:
        sock.close()


async def test_kept_alive_requests_with_pauses_and_bodies_are_served(guarded: App) -> None:
    """The deadline of a later request starts with its first byte: a pause longer than the read
    timeout between requests (within the keep-alive timeout) is fine, and so are request bodies."""
    loop = asyncio.get_running_loop()
    sock = await raw_socket(guarded.http_port)
    try:
        for i in range(3):
            body = b'{"id": "r%d"}' % i
            await loop.sock_sendall(sock, b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert b" 401 " in (await _response(sock)).split(b"\r\n")[0]  # no admin key: answered, not cut
            await asyncio.sleep(TIMEOUT * 1.5)
            await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 200 " in await _response(sock)
    finally:
        sock.close()


async def test_idle_kept_alive_connections_close_after_the_keepalive_timeout(tmp_path: Path) -> None:
    app = App(Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                     keepalive_timeout=1.0))
    await app.start()
    loop = asyncio.get_running_loop()
    sock = await raw_socket(app.http_port)
    try:
        await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in await _response(sock)
        assert await _answer(sock, timeout=5.0) == b""  # closed by the server, not by this test's timeout
    finally:
        sock.close()
        await app.stop()
