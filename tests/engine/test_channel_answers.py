"""How the channel answers: in order per connection whether a handler suspends or not, one write per
read, refusals byte-exact for every request id, a bounded inbox, and keepalive for silent peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
import websockets

from engine.app import App
from engine.config import Config
from signaling import protocol
from signaling.channel import Session
from tests.conftest import connect, token
from tests.engine.rawws import client_frame, read_until_close, server_frames, ws_client

VIEWERS = frozenset({"viewer"})


def add_test_actions(app: App) -> None:
    """`slow` waits before answering (as a checkout writing its order does); `fast` answers at once;
    `twice` sends its user a direct message (as a tap's `cart.added`) and then its ack."""

    async def slow(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(message.get("wait", 0.05)))
        if message.get("fail"):
            raise protocol.ProtocolError("conflict", "failed after waiting")
        return {"slow": True}

    async def fast(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"fast": True}

    async def twice(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        app.channel.hubs[session.room].on_direct(session.sub, {"type": "note", "n": 1})
        return {"twice": True}

    app.channel.actions.register("slow", VIEWERS, slow)
    app.channel.actions.register("fast", VIEWERS, fast, inline=True)
    app.channel.actions.register("twice", VIEWERS, twice, inline=True)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[App]:
    """An engine on its embedded backends with the test actions, running for the block."""
    app = App(Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a", **settings))
    add_test_actions(app)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_answers_keep_each_connections_order_when_a_handler_suspends(engine: App) -> None:
    add_test_actions(engine)
    client = await connect(engine)
    await client.recv_type("snapshot")
    sent = [{"type": "slow", "id": 1}, {"type": "fast", "id": 2}, {"type": "slow", "id": 3, "fail": True},
            {"type": "nope", "id": 4}, {"type": "fast", "id": 5}]
    for message in sent:
        await client.send(message)
    answers = []
    while len(answers) < len(sent):
        reply = await client.recv()
        if reply["type"] in ("ack", "error"):
            answers.append(reply)
    assert [a["re"] for a in answers] == [1, 2, 3, 4, 5]
    assert answers[0]["slow"] and answers[1]["fast"] and answers[4]["fast"]
    assert (answers[2]["type"], answers[2]["code"]) == ("error", "conflict")
    assert (answers[3]["type"], answers[3]["code"]) == ("error", "unknown_type")
    # Another client is answered while the first one's handler waits.
    other = await connect(engine, token(engine, sub="other"))
    await other.recv_type("snapshot")
    await client.send({"type": "slow", "id": 6, "wait": 2})
    assert (await other.request({"type": "fast", "id": 7}))["fast"]
    assert (await client.request({"type": "fast", "id": 8}, timeout=10))["re"] == 8  # after 6, in order
    await client.close()
    await other.close()


class CountingTransport:
    """The connection's transport, counting ``write`` calls."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_an_answer_and_the_messages_it_causes_go_out_in_one_write(engine: App) -> None:
    add_test_actions(engine)
    client = await connect(engine)
    await client.recv_type("snapshot")
    await client.recv_type("viewers")  # the room's last event for now: nothing else is written meanwhile
    (session,) = engine.channel.sessions.values()
    counting = CountingTransport(session.connection.transport)
    session.connection.transport = counting  # type: ignore[assignment]
    await client.send({"type": "twice", "id": "t1"})
    note = await client.recv_type("note")
    ack = await client.recv()
    assert note["n"] == 1 and (ack["type"], ack["re"], ack["twice"]) == ("ack", "t1", True)
    assert counting.writes == 1
    await client.close()


IDS = ["a", "ü-" * 20, "x" * protocol.MAX_REQUEST_ID, 0, -7, 2**53 + 1, '"},{"type":"ack']


@pytest.mark.parametrize("packed", [False, True], ids=["json", "msgpack"])
async def test_refusals_carry_each_request_id_exactly(engine: App, packed: bool) -> None:
    url = f"ws://127.0.0.1:{engine.ws_port}/ws?token={token(engine)}"
    kwargs: dict[str, Any] = {"subprotocols": ["livecart.msgpack"]} if packed else {}
    async with websockets.connect(url, **kwargs) as ws:

        def decode(raw: str | bytes) -> dict[str, Any]:
            return msgpack.unpackb(raw) if packed else orjson.loads(raw)

        def encode(message: dict[str, Any]) -> str | bytes:
            return msgpack.packb(message) if packed else orjson.dumps(message).decode()

        assert decode(await ws.recv())["type"] == "snapshot"
        for request_id in [*IDS, None]:
            message: dict[str, Any] = {"type": "nope"}
            if request_id is not None:
                message["id"] = request_id
            for _ in range(2):  # built once, then from the cache
                await ws.send(encode(message))
                reply = decode(await asyncio.wait_for(ws.recv(), 5))
                while reply["type"] != "error":  # room events (the viewer count) may come first
                    reply = decode(await asyncio.wait_for(ws.recv(), 5))
                expected = {"type": "error", "code": "unknown_type", "message": "unknown message type 'nope'"}
                if request_id is not None:
                    expected["re"] = request_id
                assert reply == expected


async def test_a_client_pipelining_past_its_inbox_while_it_waits_is_closed(tmp_path: Path) -> None:
    config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                    ws_inbox=8, msg_rate=10_000, msg_burst=10_000)
    app = App(config)
    add_test_actions(app)
    await app.start()
    try:
        sock = await ws_client(app.ws_port, token(app))
        loop = asyncio.get_running_loop()
        # Within the inbox: the slow answer first, then every fast one, in order.
        batch = [client_frame(orjson.dumps({"type": "slow", "id": 0, "wait": 0.3}))]
        batch += [client_frame(orjson.dumps({"type": "fast", "id": i})) for i in range(1, 8)]
        await loop.sock_sendall(sock, b"".join(batch))
        ids = await read_answers(sock, 8)
        assert ids == list(range(8))
        # Past it: closed as a flood.
        batch = [client_frame(orjson.dumps({"type": "slow", "id": 0, "wait": 1}))]
        batch += [client_frame(orjson.dumps({"type": "fast", "id": i})) for i in range(1, 50)]
        await loop.sock_sendall(sock, b"".join(batch))
        code, _ = await read_until_close(sock)
        assert code == protocol.CLOSE_FLOOD
        sock.close()
    finally:
        await app.stop()


async def test_messages_sent_while_an_answer_waits_meet_their_rate_limit_when_sent(tmp_path: Path) -> None:
    """A client pacing its messages within its rate while its first answer waits (on a slow Redis,
    say) is refused nothing: each message is judged when it arrives, not all at once in its turn.
    A burst past the limit sent meanwhile is still refused, in order."""
    async with serving(tmp_path, msg_rate=20, msg_burst=4) as app:
        client = await connect(app)
        await client.recv_type("snapshot")
        await client.send({"type": "slow", "id": 0, "wait": 1.0})
        for i in range(1, 11):  # 10 messages/s for most of the wait: half the rate
            await asyncio.sleep(0.08)
            await client.send({"type": "fast", "id": i})
        answers = await client.answers(11)
        assert [(a["type"], a["re"]) for a in answers] == [("ack", i) for i in range(11)]
        assert answers[0]["slow"]
        # A burst behind a waiting answer: what the bucket holds passes, the rest is refused, in order.
        await asyncio.sleep(0.5)  # the bucket refills
        await client.send({"type": "slow", "id": 20, "wait": 0.5})
        for i in range(21, 28):
            await client.send({"type": "fast", "id": i})
        answers = await client.answers(8)
        kinds = [a["type"] for a in answers]
        passed = kinds.count("ack")
        assert 4 <= passed <= 5 and kinds == ["ack"] * passed + ["error"] * (8 - passed)  # 5: a token refilled
        assert [a["re"] for a in answers[:passed]] == list(range(20, 20 + passed))
        assert {a["code"] for a in answers[passed:]} == {"rate_limited"}
        await client.close()


async def test_messages_waiting_behind_an_answer_are_bounded_in_bytes_by_pausing_reading(tmp_path: Path) -> None:
    """Past ``--ws-inbox-bytes`` of waiting messages the connection is not read until its answer is
    sent (the client waits on TCP), then every message is answered, in order: nothing is closed."""
    async with serving(tmp_path, ws_inbox_bytes=4096, msg_rate=10_000, msg_burst=10_000) as app:
        client = await connect(app)
        await client.recv_type("snapshot")
        await client.send({"type": "slow", "id": 0, "wait": 0.5})
        pad = "x" * 1000
        for i in range(1, 21):  # about 20 KB behind the waiting answer
            await client.send({"type": "fast", "id": i, "pad": pad})
        await asyncio.sleep(0.2)
        (session,) = app.channel.sessions.values()
        assert session.connection.paused  # the inbox holds what fits; the rest waits unread
        answers = await client.answers(21)
        assert [(a["type"], a["re"]) for a in answers] == [("ack", i) for i in range(21)]
        assert not session.connection.paused
        await client.close()


async def read_replies(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    """The next ``count`` acks or errors read from a raw socket, skipping the snapshot and events."""
    loop = asyncio.get_running_loop()
    replies: list[dict[str, Any]] = []
    rest = b""
    while len(replies) < count:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        assert chunk
        frames, rest = server_frames(rest + chunk)
        for _, payload in frames:
            message = orjson.loads(payload)
            if message["type"] in ("ack", "error"):
                replies.append(message)
    return replies


async def read_answers(sock: socket.socket, count: int) -> list[Any]:
    """The request ids of the next ``count`` acks or errors, skipping the snapshot and events."""
    return [reply["re"] for reply in await read_replies(sock, count)]


async def test_keepalive_cuts_a_silent_peer_and_keeps_a_live_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="signaling.websocket")
    config = Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                    ws_ping_interval=0.3)
    app = App(config)
    await app.start()
    try:
        live = await connect(app, token(app, sub="live"))  # the library answers pings
        silent = await ws_client(app.ws_port, token(app, sub="silent"))  # reads and answers nothing
        assert len(app.channel.sessions) == 2
        deadline = time.monotonic() + 20
        while len(app.channel.sessions) > 1:
            assert time.monotonic() < deadline, "a peer that answers no ping was never cut"
            await asyncio.sleep(0.05)
        (left,) = app.channel.sessions.values()
        assert left.sub == "live"
        assert "keepalive: cut 1 connection(s)" in caplog.text  # the operator sees why the client was reset
        await asyncio.sleep(1.0)  # several more intervals
        assert len(app.channel.sessions) == 1
        await live.recv_type("snapshot")
        await live.close()
        silent.close()
    finally:
        await app.stop()
