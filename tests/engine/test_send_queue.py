"""Clients that send and never read: everything written to them counts against the send queue limit."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import orjson
from websockets.protocol import State

from engine.app import App
from engine.config import Config
from signaling import protocol
from tests.conftest import connect, token
from tests.engine.rawws import client_frame, read_until_close, ws_client
from tests.looplag import MAX_STALL, loop_lag

LIMIT = 64 * 1024
SLOW_CLOSE_AFTER = 1.0


async def _push_actions(sock: socket.socket) -> None:
    """Send 1,000 actions a second until the server stops taking them; each one's error reply is
    larger than the action, so what the server owes the client grows faster than what it reads."""
    loop = asyncio.get_running_loop()
    batch = b"".join(client_frame(orjson.dumps({"type": "nope", "id": f"{i:0128d}"})) for i in range(20))
    while True:
        await loop.sock_sendall(sock, batch)
        await asyncio.sleep(0.02)


async def test_clients_that_never_read_are_bounded_and_closed(tmp_path: Path) -> None:
    config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                    send_queue_bytes=LIMIT, slow_close_after=SLOW_CLOSE_AFTER,
                    msg_rate=10_000, msg_burst=10_000)
    app = App(config)
    app.channel.close_timeout = 20.0  # time for the test to read the backlogs before the cut
    await app.start()
    try:
        socks = [await ws_client(app.ws_port, token(app, sub=f"guest{i}"), rcvbuf=4096) for i in range(3)]
        sessions = list(app.channel.sessions.values())
        assert len(sessions) == 3
        # Room events first fill the kernel's socket buffers (megabytes, in few writes), so what
        # follows lands in the process's own buffer: only replies to the clients' actions.
        n = 0
        while any(s.transport.get_write_buffer_size() == 0 for s in sessions):
            await app.bus.publish("demo", "test.bulk", {"n": n, "pad": "x" * 16000})
            n += 1
            await asyncio.sleep(0.005)
            assert n < 5000, "the kernel buffers never filled"
        await asyncio.sleep(0.2)
        assert all(s.lagging_since is None and s.transport.get_write_buffer_size() < LIMIT // 2 for s in sessions)
        pushers = [asyncio.create_task(_push_actions(sock)) for sock in socks]
        worst = 0
        lagged: dict[int, float] = {}  # when each session was first seen lagging
        closed: dict[int, float] = {}  # and when it was first seen closing
        async with loop_lag() as lag:
            deadline = time.monotonic() + 60
            while len(closed) < len(sessions):
                assert time.monotonic() < deadline, "a client that never reads was not closed"
                for session in sessions:
                    if session.connection.protocol.state is State.OPEN:
                        worst = max(worst, session.transport.get_write_buffer_size())
                        if session.lagging_since is not None:
                            lagged.setdefault(session.conn_id, time.monotonic())
                    else:
                        closed.setdefault(session.conn_id, time.monotonic())
                await asyncio.sleep(0.005)
        # Every reply was counted: the server never buffered more than the limit for any of them.
        assert 0 < worst <= LIMIT, worst
        assert lag.worst < MAX_STALL, lag.worst
        # Each was closed after --slow-close-after behind (the watcher looks every 100 ms; the
        # margin is for a busy machine, the point is that it happens at all).
        for session in sessions:
            assert SLOW_CLOSE_AFTER - 0.1 <= closed[session.conn_id] - lagged[session.conn_id] < SLOW_CLOSE_AFTER + 5
        for session in sessions:
            assert session.lagging_since is None  # handed over to the close
        for pusher in pushers:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pusher
        # A client that reads its backlog now finds the resumable "too slow" close.
        for sock in socks:
            code, replies = await read_until_close(sock)
            assert code == protocol.CLOSE_TOO_SLOW
            assert replies > 0
            sock.close()
        deadline = time.monotonic() + 15
        while app.channel.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not app.channel.sessions
    finally:
        await app.stop()


async def test_errors_never_echo_a_long_type(engine: App) -> None:
    client = await connect(engine)
    await client.recv_type("snapshot")
    reply = await client.request({"type": "t" * 60_000, "id": "long"})
    assert reply["code"] == "unknown_type" and reply["re"] == "long"
    assert len(orjson.dumps(reply)) < 400
    # Any other error message is cut too, whatever a handler put in it.
    reply = await client.request({"type": "chat", "id": "c", "text": "x" * 60_000})
    assert reply["code"] == "too_long" and len(reply["message"]) <= protocol.MAX_ERROR_MESSAGE
    await client.close()
