"""A connection whose answer waits is still read, within bounds: what waits in its inbox is bounded
in bytes however many answers wait in a row, keeps no decoded bodies, is judged by the rate limits
in the order it was sent, and one read's checks stop at the client's turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import orjson
import websockets

from signaling import protocol
from signaling.channel import Session
from signaling.websocket import WebSocket
from tests.conftest import token
from tests.engine.rawws import client_frame, ws_client
from tests.engine.test_channel_answers import VIEWERS, read_answers, read_replies, serving

READ = 256 * 1024  # the most one read hands over


def watch_inbox(ws: WebSocket) -> dict[str, Any]:
    """Record the most bytes the connection's inbox held, and whether any decoded body waited in it."""
    seen: dict[str, Any] = {"bytes": 0, "bodies": 0}
    queue = ws._queue

    def queued(data: bytes, binary: bool, early: Any) -> None:
        queue(data, binary, early)
        seen["bytes"] = max(seen["bytes"], ws._inbox_bytes)
        seen["bodies"] += early is not None and early[1] is not None

    ws._queue = queued  # type: ignore[method-assign]
    return seen


async def test_the_byte_bound_holds_while_answers_wait_one_after_another(tmp_path: Path) -> None:
    async with serving(tmp_path, msg_rate=10_000, msg_burst=10_000) as app:
        sock = await ws_client(app.ws_port, token(app))
        (session,) = app.channel.sessions.values()
        seen = watch_inbox(session.connection)
        pad = "x" * 60_000
        batch = [client_frame(orjson.dumps({"type": "slow", "id": 0, "wait": 0.3}))]
        batch += [client_frame(orjson.dumps({"type": "slow", "id": i, "wait": 0.05})) for i in range(1, 41)]
        batch += [client_frame(orjson.dumps({"type": "fast", "id": 100 + i, "pad": pad})) for i in range(150)]
        loop = asyncio.get_running_loop()
        sending = loop.create_task(loop.sock_sendall(sock, b"".join(batch)))
        assert await read_answers(sock, 191) == list(range(41)) + [100 + i for i in range(150)]
        await sending
        assert seen["bytes"] <= app.config.ws_inbox_bytes + READ + 64 * 1024, seen  # the bound, one read's overshoot
        sock.close()


async def test_no_decoded_body_waits_in_the_inbox(tmp_path: Path) -> None:
    """msgpack decodes one byte (an empty map) to a dict of 64: a body kept with its verdict would
    make the byte bound count a small share of what waits."""
    async with serving(tmp_path, msg_rate=10_000, msg_burst=10_000) as app:
        url = f"ws://127.0.0.1:{app.ws_port}/ws?token={token(app)}"
        async with websockets.connect(url, subprotocols=[protocol.MSGPACK_SUBPROTOCOL]) as ws:
            await asyncio.sleep(0.1)
            (session,) = app.channel.sessions.values()
            seen = watch_inbox(session.connection)
            await ws.send(msgpack.packb({"type": "slow", "id": 0, "wait": 0.5}))
            for n in range(1, 5):
                await ws.send(msgpack.packb({"type": "fast", "id": n, "x": [{}] * 10_000}))
            answers = []
            while len(answers) < 5:
                message = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
                if message["type"] in ("ack", "error"):
                    answers.append((message["type"], message["re"]))
            assert answers == [("ack", n) for n in range(5)]
            assert seen["bodies"] == 0


async def test_rate_limits_judge_messages_in_the_order_they_were_sent(tmp_path: Path) -> None:
    """Messages read past the byte bound wait unjudged; messages read later, while a later answer
    waits, must not take the tokens before them."""
    async with serving(tmp_path, ws_inbox_bytes=4096, msg_rate=10_000, msg_burst=10_000) as app:
        async def limited(session: Session, message: dict[str, Any]) -> dict[str, Any]:
            return {}

        app.channel.actions.register("limited", VIEWERS, limited, rate=(0.001, 3), inline=True)
        sock = await ws_client(app.ws_port, token(app))
        loop = asyncio.get_running_loop()
        pad = "x" * 3000
        first = [client_frame(orjson.dumps({"type": "slow", "id": 0, "wait": 0.3}))]
        first += [client_frame(orjson.dumps({"type": "fast", "id": i, "pad": pad})) for i in (1, 2)]
        first += [client_frame(orjson.dumps({"type": "slow", "id": 3, "wait": 0.5}))]
        first += [client_frame(orjson.dumps({"type": "limited", "id": f"early{i}"})) for i in range(3)]
        await loop.sock_sendall(sock, b"".join(first))
        await asyncio.sleep(0.5)  # "slow" 3 waits now
        later = [client_frame(orjson.dumps({"type": "limited", "id": f"late{i}"})) for i in range(3)]
        await loop.sock_sendall(sock, b"".join(later))
        got = [(reply["type"], reply["re"]) for reply in await read_replies(sock, 10)]
        assert got == [("ack", 0), ("ack", 1), ("ack", 2), ("ack", 3),
                       ("ack", "early0"), ("ack", "early1"), ("ack", "early2"),
                       ("error", "late0"), ("error", "late1"), ("error", "late2")], got
        sock.close()


async def test_checks_on_arrival_stop_at_the_clients_turn(tmp_path: Path) -> None:
    """A read that arrives with the turn already over (here: no turn at all while the answer waits)
    is not checked in the read callback: it waits unjudged, reading stops until the answer is sent,
    and all is answered in order."""
    async with serving(tmp_path, msg_rate=10_000, msg_burst=10_000) as app:
        sock = await ws_client(app.ws_port, token(app))
        (session,) = app.channel.sessions.values()
        seen = watch_inbox(session.connection)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, client_frame(orjson.dumps({"type": "slow", "id": 0, "wait": 0.5})))
        await asyncio.sleep(0.1)
        turn, app.channel.listener.turn = app.channel.listener.turn, 0.0
        await loop.sock_sendall(sock, b"".join(client_frame(orjson.dumps({"type": "fast", "id": i}))
                                               for i in range(1, 4)))
        await asyncio.sleep(0.1)
        assert session.connection.paused
        app.channel.listener.turn = turn  # before the answer is sent, which hands the rest over
        assert await read_answers(sock, 4) == [0, 1, 2, 3]
        assert seen["bodies"] == 0 and not session.connection.paused
        sock.close()
