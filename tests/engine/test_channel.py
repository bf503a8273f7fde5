"""The websocket channel through real sockets: join, order, resume, slow clients, bad input."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import msgpack
import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from engine.app import App
from signaling.tokens import mint
from tests.conftest import Client, connect, token


async def test_join_gets_snapshot_first(engine: App) -> None:
    latest = engine.bus.seq("demo")
    client = await connect(engine, token(engine, sub="alice"))
    snap = await client.recv()
    assert snap["type"] == "snapshot"
    assert snap["room"] == "demo"
    assert snap["you"] == {"sub": "alice", "role": "viewer"}
    # Current when sent: the viewer count this join changes may be published right after it.
    assert latest <= snap["seq"] <= engine.bus.seq("demo")
    assert snap["viewers"] == 1
    if snap["seq"] < engine.bus.seq("demo"):  # the stream continues from the snapshot without a gap
        assert (await client.recv())["seq"] == snap["seq"] + 1
    await client.close()


async def test_viewer_count_is_a_coalesced_state_event(config) -> None:
    # A tick long enough that five joins fall inside one even on a loaded machine.
    engine = App(config.replace(tick_ms=1000))
    await engine.start()
    try:
        watcher = await connect(engine, token(engine, role="host"))
        await watcher.recv_type("snapshot")
        others = [await connect(engine) for _ in range(5)]
        # Five joins inside one tick arrive as few events whose latest value wins.
        counts = []
        while not counts or counts[-1] != 5:
            event = await watcher.recv_type("viewers")
            assert event["key"] == "viewers"
            counts.append(event["count"])
        assert len(counts) < 5
        for other in others:
            await other.close()
        await watcher.close()
    finally:
        await engine.stop()


async def test_events_reach_every_client_in_order(engine: App) -> None:
    clients = [await connect(engine) for _ in range(20)]
    for client in clients:
        await client.recv_type("snapshot")
    for i in range(200):
        await engine.bus.publish("demo", "test.tick", {"n": i})
        if i % 50 == 0:
            await asyncio.sleep(0)
    for client in clients:
        seen, last_seq = [], 0
        while len(seen) < 200:
            event = await client.recv()
            if event["type"] != "test.tick":
                continue
            assert event["seq"] > last_seq
            last_seq = event["seq"]
            seen.append(event["n"])
        assert seen == list(range(200))
        await client.close()


async def test_chat_is_published_to_the_room(engine: App) -> None:
    alice = await connect(engine, token(engine, sub="alice"))
    bob = await connect(engine, token(engine, sub="bob"))
    await alice.recv_type("snapshot")
    await bob.recv_type("snapshot")
    ack = await alice.request({"type": "chat", "id": "c1", "text": "  hello room  "})
    assert ack["type"] == "ack" and ack["re"] == "c1"
    line = await bob.recv_type("chat")
    assert line == {**line, "user": "alice", "text": "hello room", "seq": ack["seq"]}
    too_long = await alice.request({"type": "chat", "id": "c2", "text": "x" * 501})
    assert too_long["code"] == "too_long"
    await alice.close()
    await bob.close()


async def test_chat_rate_limit_per_connection(engine: App) -> None:
    client = await connect(engine)
    await client.recv_type("snapshot")
    codes = [(await client.request({"type": "chat", "id": i, "text": "spam"}))["type"] for i in range(8)]
    assert codes[:5] == ["ack"] * 5
    assert "error" in codes[5:]
    reply = await client.request({"type": "chat", "id": 99, "text": "spam"})
    assert reply["code"] == "rate_limited"


async def test_resume_replays_exactly_the_missed_events(engine: App) -> None:
    client = await connect(engine)
    snap = await client.recv_type("snapshot")
    for i in range(3):
        await engine.bus.publish("demo", "test.tick", {"n": i})
    first = await client.recv_type("test.tick")
    await client.close()
    for i in range(3, 6):
        await engine.bus.publish("demo", "test.tick", {"n": i})
    again = await connect(engine, query=f"&since={first['seq']}")
    # Viewer-count state events may fall in between; every event after `since` comes, in order.
    replayed = [await again.recv()]
    while sum(e["type"] == "test.tick" for e in replayed) < 5:
        replayed.append(await again.recv())
    assert replayed[0]["type"] != "snapshot"
    assert [e["n"] for e in replayed if e["type"] == "test.tick"] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in replayed] == list(range(first["seq"] + 1, first["seq"] + 1 + len(replayed)))
    assert first["seq"] > snap["seq"]
    await engine.bus.publish("demo", "test.tick", {"n": 6})
    live = await again.recv_type("test.tick")
    assert live["n"] == 6 and live["seq"] > replayed[-1]["seq"]
    await again.close()


async def test_resume_from_too_old_seq_gets_a_snapshot(engine: App, config) -> None:
    client = await connect(engine)
    snap = await client.recv_type("snapshot")
    await client.close()
    for i in range(config.history_size + 10):
        await engine.bus.publish("demo", "test.tick", {"n": i})
    latest = engine.bus.seq("demo")
    again = await connect(engine, query=f"&since={snap['seq']}")
    fresh = await again.recv()
    assert fresh["type"] == "snapshot"
    # At the room's latest seq (the viewer count this client adds may be published right after it).
    assert fresh["seq"] >= latest
    # A seq from another server lifetime (or from the future) is not trusted either.
    future = await connect(engine, query=f"&since={fresh['seq'] + 1000}")
    assert (await future.recv())["type"] == "snapshot"
    await again.close()
    await future.close()


async def test_msgpack_subprotocol(engine: App) -> None:
    url = f"ws://127.0.0.1:{engine.ws_port}/ws?token={token(engine)}"
    async with websockets.connect(url, subprotocols=["livecart.msgpack"]) as ws:
        assert ws.subprotocol == "livecart.msgpack"
        snap = msgpack.unpackb(await ws.recv())
        assert snap["type"] == "snapshot"
        await engine.bus.publish("demo", "test.tick", {"n": 1})
        while True:
            event = msgpack.unpackb(await ws.recv())
            if event["type"] == "test.tick":
                break
        assert event["n"] == 1
        await ws.send(msgpack.packb({"type": "chat", "id": 7, "text": "hi"}))
        while True:
            reply = msgpack.unpackb(await ws.recv())
            if reply["type"] == "ack":
                break
        assert reply["re"] == 7


async def test_permessage_deflate_is_off_by_default(engine: App) -> None:
    url = f"ws://127.0.0.1:{engine.ws_port}/ws?token={token(engine)}"
    async with websockets.connect(url, compression="deflate") as ws:
        assert ws.protocol.extensions == []


async def _stalled_client(app: App, tok: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", app.ws_port))
    await loop.sock_sendall(sock, (
        f"GET /ws?token={tok} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in (await loop.sock_recv(sock, 300)).split(b"\r\n")[0]
    return sock


async def _flood_until_lagging(app: App, fast: Client | None) -> int:
    """Publish 16 KB events until the stalled session is skipped; the fast client keeps reading."""
    stalled = next(iter(app.channel.sessions.values()))
    sent = 0
    while stalled.lagging_since is None and sent < 2000:
        await app.bus.publish("demo", "test.bulk", {"n": sent, "pad": "x" * 16000})
        sent += 1
        if fast is not None:
            assert (await fast.recv_type("test.bulk"))["n"] == sent - 1
        else:
            await asyncio.sleep(0)
    assert stalled.lagging_since is not None, "the stalled client was never skipped"
    return sent


async def test_slow_client_is_resynced_and_does_not_delay_others(tmp_path) -> None:
    from engine.config import Config

    config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                    send_queue_bytes=256 * 1024, slow_close_after=30)
    app = App(config)
    await app.start()
    try:
        stalled = await _stalled_client(app, token(app))
        fast = await connect(app)
        await fast.recv_type("snapshot")
        # The fast client receives every event at once although the other one stopped reading.
        await _flood_until_lagging(app, fast)
        session = next(iter(app.channel.sessions.values()))
        assert session.transport.get_write_buffer_size() <= config.send_queue_bytes + 17000
        for i in range(20):
            await app.bus.publish("demo", "test.bulk", {"n": -i})
            assert (await fast.recv_type("test.bulk"))["n"] == -i
        # The stalled client reads again: it drains and is resynced with a snapshot.
        loop = asyncio.get_running_loop()
        seen = b""
        deadline = time.time() + 20
        while b'"resync":true' not in seen and time.time() < deadline:
            seen = seen[-100000:] + await asyncio.wait_for(loop.sock_recv(stalled, 1 << 20), 5)
        assert b'"resync":true' in seen
        assert session.lagging_since is None
        stalled.close()
        await fast.close()
    finally:
        await app.stop()


async def test_client_that_stays_behind_is_closed_resumably(tmp_path) -> None:
    from engine.config import Config

    config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                    send_queue_bytes=64 * 1024, slow_close_after=0.3)
    app = App(config)
    await app.start()
    try:
        app.channel.close_timeout = 5.0
        stalled = await _stalled_client(app, token(app))
        await _flood_until_lagging(app, None)
        session = next(iter(app.channel.sessions.values()))
        deadline = time.time() + 10
        while session.connection.protocol.state is not State.CLOSING and time.time() < deadline:
            await asyncio.sleep(0.05)
        assert session.connection.protocol.state is State.CLOSING
        # A client that reads its backlog before the cut finds the close frame with code 4008.
        loop = asyncio.get_running_loop()
        data = b""
        reason = b"too slow: reconnect with since"
        close_frame = struct.pack("!BBH", 0x88, len(reason) + 2, 4008) + reason
        while not data.endswith(close_frame):
            data = data[-100:] + await asyncio.wait_for(loop.sock_recv(stalled, 1 << 20), 5)
        stalled.close()
        deadline = time.time() + 10
        while app.channel.sessions and time.time() < deadline:
            await asyncio.sleep(0.1)
        assert not app.channel.sessions
    finally:
        await app.stop()


async def _refused(app: App, query: str) -> tuple[dict, int]:
    url = f"ws://127.0.0.1:{app.ws_port}/ws?{query}"
    async with websockets.connect(url) as ws:
        import orjson

        message = orjson.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return message, ws.close_code


async def test_bad_tokens_are_refused_with_codes(engine: App) -> None:
    message, code = await _refused(engine, "")
    assert message["code"] == "unauthorized" and code == 4401
    message, code = await _refused(engine, "token=not-a-jwt")
    assert message["code"] == "unauthorized" and code == 4401
    forged = mint("another-secret-that-is-long-enough-32b", "demo", "host", "mallory")
    message, code = await _refused(engine, f"token={forged}")
    assert message["code"] == "unauthorized" and code == 4401
    expired = mint(engine.secret, "demo", "viewer", "late", ttl=1)
    await asyncio.sleep(2.1)
    message, code = await _refused(engine, f"token={expired}")
    assert message["code"] == "token_expired" and code == 4401
    await engine.rooms.create("other")
    message, code = await _refused(engine, f"token={token(engine, room='other')}&room=demo")
    assert message["code"] == "unauthorized"
    message, code = await _refused(engine, f"token={token(engine, room='ghost')}")
    assert message["code"] == "not_found" and code == 4404
    message, code = await _refused(engine, f"token={token(engine)}&since=abc")
    assert message["code"] == "bad_request" and code == 4400


async def test_token_expiry_closes_a_live_connection(engine: App) -> None:
    client = await connect(engine, mint(engine.secret, "demo", "viewer", "brief", ttl=1))
    await client.recv_type("snapshot")
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv(timeout=5)
    assert client.ws.close_code == 4401


async def test_bad_messages_get_errors_and_the_room_lives_on(engine: App) -> None:
    client = await connect(engine)
    other = await connect(engine)
    await client.recv_type("snapshot")
    await other.recv_type("snapshot")
    await client.ws.send("{not json")
    assert (await client.recv_type("error"))["code"] == "bad_request"
    await client.ws.send("[1, 2]")
    assert (await client.recv_type("error"))["code"] == "bad_request"
    reply = await client.request({"type": "teleport", "id": "t1"})
    assert reply["code"] == "unknown_type" and reply["re"] == "t1"
    reply = await client.request({"type": "chat", "id": "t2", "text": 42})
    assert reply["code"] == "bad_request"
    await client.send({"type": "chat", "id": {"nested": 1}, "text": "x"})
    assert (await client.recv_type("error"))["code"] == "bad_request"
    service = await connect(engine, token(engine, role="service"))
    await service.recv_type("snapshot")
    assert (await service.request({"type": "chat", "id": "s", "text": "hi"}))["code"] == "forbidden"
    # Nothing of that disturbed the room: a chat line still reaches the other viewer.
    assert (await client.request({"type": "chat", "id": "ok", "text": "still here"}))["type"] == "ack"
    assert (await other.recv_type("chat"))["text"] == "still here"
    for c in (client, other, service):
        await c.close()


async def test_oversized_frame_closes_with_1009(engine: App, config) -> None:
    client = await connect(engine, max_size=None)
    await client.recv_type("snapshot")
    await client.ws.send("x" * (config.max_frame + 1))
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv()
    assert client.ws.close_code == 1009


async def test_flood_is_rate_limited_then_closed(engine: App, config) -> None:
    client = await connect(engine)
    await client.recv_type("snapshot")
    for i in range(config.msg_burst * 3):
        await client.send({"type": "ping-unknown", "id": i})
    codes = set()
    with pytest.raises(ConnectionClosed):
        while True:
            message = await client.recv()
            if message["type"] == "error":
                codes.add(message["code"])
    assert "rate_limited" in codes
    assert client.ws.close_code == 4429


async def test_wrong_path_is_404(engine: App) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"ws://127.0.0.1:{engine.ws_port}/elsewhere")
    assert info.value.response.status_code == 404


async def test_stop_closes_clients_with_resumable_code(engine: App) -> None:
    client = await connect(engine)
    await client.recv_type("snapshot")
    await engine.channel.stop()
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1012


