"""What an anonymous client can do to the websocket port through a raw socket: every way of ending
a connection leaves no session, user limit or per-address slot behind, whatever it left unread."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from engine.app import App
from engine.config import Config
from signaling.channel import Session
from tests.conftest import connect, token
from tests.engine.rawws import client_frame, raw_socket, server_frames, upgrade, ws_client
from tests.redis_server import RedisServer

CLOSE_TIMEOUT = 0.5
VIEWERS = frozenset({"viewer"})


@pytest.fixture
async def app(tmp_path: Path) -> App:
    config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                    send_queue_bytes=1 << 20, slow_close_after=60.0)
    app = App(config)
    app.channel.close_timeout = CLOSE_TIMEOUT
    await app.start()
    yield app
    await app.stop()


async def _unread_backlog(app: App, sock: socket.socket) -> None:
    """Fill the client's kernel buffers with room events until the server holds bytes it cannot write."""
    session = next(iter(app.channel.sessions.values()))
    n = 0
    while session.transport.get_write_buffer_size() == 0:
        await app.bus.publish("demo", "test.bulk", {"n": n, "pad": "x" * 16000})
        n += 1
        await asyncio.sleep(0.005)
        assert n < 5000, "the kernel buffers never filled"


async def _gone(app: App) -> None:
    deadline = time.monotonic() + CLOSE_TIMEOUT + 5
    while app.channel.sessions or app.channel.listener.connections:
        assert time.monotonic() < deadline, "the connection was kept: its session and slot are held for good"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("ending", ["close frame", "unmasked frame", "oversized frame", "end of stream"])
async def test_a_client_that_never_reads_and_ends_the_connection_is_cut(app: App, ending: str) -> None:
    loop = asyncio.get_running_loop()
    sock = await ws_client(app.ws_port, token(app, sub="reader"), rcvbuf=4096)
    try:
        await _unread_backlog(app, sock)
        if ending == "close frame":
            await loop.sock_sendall(sock, client_frame(b"\x03\xe8", opcode=0x8))
        elif ending == "unmasked frame":
            await loop.sock_sendall(sock, b"\x81\x02hi")
        elif ending == "oversized frame":
            await loop.sock_sendall(sock, b"\x82\xff" + (1 << 62).to_bytes(8, "big") + b"mask")
        else:
            sock.shutdown(socket.SHUT_WR)
        await _gone(app)
    finally:
        sock.close()


async def test_messages_waiting_behind_a_handler_are_dropped_once_the_connection_is_closed(app: App) -> None:
    """A client pipelines behind a suspended answer, then breaks the protocol (a frame without its
    mask): the server has sent its close frame, so what waited is not acted on after it."""
    loop = asyncio.get_running_loop()
    done: list[int] = []
    gate = asyncio.Event()

    async def slow(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        await gate.wait()
        return {}

    async def record(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        done.append(message["id"])
        return {}

    app.channel.actions.register("slow", VIEWERS, slow)
    app.channel.actions.register("record", VIEWERS, record, inline=True)
    sock = await ws_client(app.ws_port, token(app, sub="piper"), rcvbuf=4096)
    try:
        await _unread_backlog(app, sock)  # so the server's close waits on a backlog for a while
        session = next(iter(app.channel.sessions.values()))
        pipelined = [client_frame(orjson.dumps({"type": "slow", "id": 0}))]
        pipelined += [client_frame(orjson.dumps({"type": "record", "id": i})) for i in range(1, 4)]
        await loop.sock_sendall(sock, b"".join(pipelined) + b"\x81\x02hi")
        deadline = time.monotonic() + 5
        while session.connection.protocol.close_sent is None:
            assert time.monotonic() < deadline, "the unmasked frame was not refused"
            await asyncio.sleep(0.01)
        gate.set()
        await _gone(app)
        assert done == []
    finally:
        sock.close()


async def test_a_lagging_client_that_catches_up_is_answered_in_order(app: App) -> None:
    """A client stops reading while an answer of its is suspended, lags behind the room, then reads
    again: its resync must not hand over the messages waiting behind that answer before it."""
    loop = asyncio.get_running_loop()
    done: list[int] = []
    gate = asyncio.Event()

    async def slow(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        await gate.wait()
        done.append(message["id"])
        return {}

    async def record(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        done.append(message["id"])
        return {}

    app.channel.actions.register("slow", VIEWERS, slow)
    app.channel.actions.register("record", VIEWERS, record, inline=True)
    sock = await ws_client(app.ws_port, token(app, sub="laggard"), rcvbuf=4096)
    try:
        session = next(iter(app.channel.sessions.values()))
        await _unread_backlog(app, sock)
        await loop.sock_sendall(sock, client_frame(orjson.dumps({"type": "slow", "id": 0}))
                                + client_frame(orjson.dumps({"type": "record", "id": 1})))
        n = 0
        while session.lagging_since is None:
            await app.bus.publish("demo", "test.bulk", {"n": n, "pad": "x" * 16000})
            n += 1
            await asyncio.sleep(0.001)
            assert n < 5000, "the client never lagged"

        async def drain() -> None:
            while await loop.sock_recv(sock, 1 << 20):
                pass

        reader = asyncio.create_task(drain())
        deadline = time.monotonic() + 5
        while session.lagging_since is not None:  # resynced once it caught up
            assert time.monotonic() < deadline, "the client was not resynced"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert done == []  # the second message still waits for the first one's answer
        gate.set()
        while len(done) < 2:
            assert time.monotonic() < deadline + 5
            await asyncio.sleep(0.01)
        assert done == [0, 1]
        reader.cancel()
    finally:
        sock.close()


async def test_a_request_target_that_is_no_url_gets_a_404(app: App, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    for target in ("//[/ws", "http://[::1/ws?token=x"):
        sock = await raw_socket(app.ws_port)
        try:
            request = upgrade("token=x").replace(b"/ws?token=x", target.encode(), 1)
            await loop.sock_sendall(sock, request)
            head = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            assert head.startswith(b"HTTP/1.1 404 "), head
        finally:
            sock.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await _gone(app)


async def test_pings_from_a_client_that_never_reads_buffer_no_more_than_the_send_queue(app: App) -> None:
    """Pings are not messages (no rate limit) and each is answered by a pong: a client that sends
    them and reads nothing must not make the server buffer pongs without end in a quiet room."""
    loop = asyncio.get_running_loop()
    sock = await ws_client(app.ws_port, token(app, sub="pinger"), rcvbuf=4096)
    try:
        session = next(iter(app.channel.sessions.values()))
        batch = client_frame(b"p" * 125, opcode=0x9) * 1000
        worst = 0
        for _ in range(64):  # 8 MB of pings
            await loop.sock_sendall(sock, batch)
            worst = max(worst, session.connection.buffered())
        await asyncio.sleep(0.2)
        worst = max(worst, session.connection.buffered())
        assert worst <= app.config.send_queue_bytes, worst
    finally:
        sock.close()


@pytest.mark.parametrize("compression", [False, True])
async def test_a_request_and_frames_sent_before_the_101_one_byte_at_a_time_are_answered_in_order(
        tmp_path: Path, compression: bool) -> None:
    """The opening request, then (without waiting for the 101) a message fragmented around a ping,
    and a plain message, all trickled byte by byte: each answer comes, in order, once."""
    config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                    permessage_deflate=compression)
    app = App(config)
    await app.start()
    loop = asyncio.get_running_loop()

    async def record(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"n": message["id"]}

    app.channel.actions.register("record", VIEWERS, record, inline=True)
    sock = await raw_socket(app.ws_port)
    try:
        request = upgrade(f"token={token(app, sub='trickle')}")
        if compression:
            request = request[:-2] + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        first = orjson.dumps({"type": "record", "id": 1})
        data = (request + b"\x01" + client_frame(first[:5])[1:]  # text, not final
                + client_frame(b"hello", opcode=0x9)
                + client_frame(first[5:], opcode=0x0) + client_frame(orjson.dumps({"type": "record", "id": 2})))
        for i in range(len(data)):
            await loop.sock_sendall(sock, data[i:i + 1])
        rest, head = b"", b""
        while b"\r\n\r\n" not in head:
            head += await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
        assert b" 101 " in head.split(b"\r\n")[0]
        assert (b"permessage-deflate" in head) is compression
        kinds: list[tuple[str, Any]] = []
        data_frames = 0
        while ("pong", b"hello") not in kinds or data_frames < 3 or not (compression or ("ack", 2) in kinds):
            frames, rest = server_frames(rest + await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5))
            for opcode, payload in frames:
                if opcode == 0xA:
                    kinds.append(("pong", payload))
                    continue
                data_frames += 1
                if not compression:  # compressed ones are counted only
                    body = orjson.loads(payload)
                    kinds.append((body["type"], body.get("n")))
        if not compression:
            assert [k for k in kinds if k[0] in ("snapshot", "ack")] == [("snapshot", None), ("ack", 1), ("ack", 2)]
        assert ("pong", b"hello") in kinds
    finally:
        sock.close()
        await app.stop()


async def test_a_lagging_client_that_leaves_while_its_resync_reads_redis_leaves_nothing_behind(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With Redis, a lagging client's resync snapshot is read before it is built. A client that
    leaves while that read is in flight leaves nothing in the channel, the read's end breaks
    nothing, and the room's other clients keep being served (events and answers)."""
    server = RedisServer()
    server.start()
    try:
        config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                        redis_url=server.url, redis_timeout=5.0, send_queue_bytes=256 * 1024,
                        slow_close_after=60.0)
        app = App(config)
        await app.start()
        try:
            stayer = await connect(app, token(app, sub="stayer"))
            await stayer.recv_type("snapshot")
            pauser = redis.Redis.from_url(server.url)
            sock = await ws_client(app.ws_port, token(app, sub="leaver"), rcvbuf=4096)
            leaver = next(s for s in app.channel.sessions.values() if s.sub == "leaver")
            n = 0
            while leaver.lagging_since is None:
                await app.bus.publish("demo", "test.bulk", {"n": n, "pad": "x" * 16000})
                n += 1
                await asyncio.sleep(0.005)
                assert n < 5000, "the client never lagged"
            caplog.clear()
            await asyncio.to_thread(pauser.execute_command, "CLIENT", "PAUSE", "600", "ALL")
            await asyncio.sleep(0.25)  # the lagging watcher is reading the client's cart
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
            deadline = time.monotonic() + CLOSE_TIMEOUT + 5
            while leaver.conn_id in app.channel.sessions:
                assert time.monotonic() < deadline, "the leaver's session was kept"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.8)  # the read finishes, and the watcher goes on
            pauser.close()
            assert leaver not in app.channel.lagging
            assert [s.sub for s in app.channel.hubs["demo"].sessions.values()] == ["stayer"]
            assert [s.sub for s in app.channel.sessions.values()] == ["stayer"]
            marker = await app.bus.publish("demo", "test.after", {})
            assert (await stayer.recv_type("test.after", timeout=10))["seq"] == marker.seq
            ack = await stayer.request({"type": "chat", "id": "c1", "text": "still here"}, timeout=10)
            assert ack["type"] == "ack", ack
            assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
            await stayer.close()
        finally:
            await app.stop()
    finally:
        server.close()
