"""Viewers over the websocket channel: offer in, answer in the ack, same relay path as WHEP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from media_peers import Publisher, Viewer

from engine.app import App
from engine.config import Config
from engine.media.service import MediaService
from signaling.tokens import mint

H264_OPUS = {"video": "H264", "audio": "opus"}


@pytest.fixture
async def app(tmp_path: Path, forwarding: str) -> AsyncIterator[tuple[App, MediaService]]:
    config = Config(
        host="127.0.0.1",
        http_port=0,
        ws_port=0,
        data_dir=str(tmp_path / "data"),
        secret="test-secret-for-media-tests-32-bytes!",
        admin_key="test-admin",
        tick_ms=20,
        announce="127.0.0.1",
        forwarding=forwarding,
    )
    engine = App(config)
    await engine.rooms.create("shop")
    await engine.start()
    yield engine, engine.media
    await engine.stop()


async def request(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(orjson.dumps(message).decode())
    while True:
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply.get("re") == message["id"] and reply["type"] in ("ack", "error"):
            return reply


async def test_websocket_and_whep_viewers_share_the_relay(app, h264, opus):
    engine, media = app
    base = f"http://127.0.0.1:{engine.http_port}"
    async with aiohttp.ClientSession() as http:
        publisher = Publisher(h264, opus)
        key = engine.rooms.get("shop").stream_key
        assert (await publisher.publish(http, base, "shop", key, H264_OPUS)).status == 201
        whep = Viewer()
        assert (await whep.whep(http, base, "shop")).status == 201

        sockets, ws_viewers = [], []
        for n in range(2):
            token = mint(engine.secret, "shop", "viewer", f"user{n}")
            ws = await websockets.connect(f"ws://127.0.0.1:{engine.ws_port}/ws?token={token}")
            viewer = Viewer()
            ack = await request(ws, {"type": "offer", "id": f"o{n}", "sdp": await viewer.offer()})
            assert ack["type"] == "ack", ack
            await viewer.accept(ack["sdp"])
            sockets.append(ws)
            ws_viewers.append(viewer)

        async def all_receive() -> None:
            while not all(v.log.count("video") >= 20 for v in [whep, *ws_viewers]):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_receive(), 10)
        assert len(media.room("shop").viewers) == 3

        bad = await request(sockets[0], {"type": "offer", "id": "bad", "sdp": "nonsense"})
        assert bad["type"] == "error" and bad["code"] == "bad_request"

        await sockets[1].close()  # the channel closes that viewer's peer connection

        async def one_fewer() -> None:
            while len(media.room("shop").viewers) != 2:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(one_fewer(), 5)
        await sockets[0].close()
        for peer in (whep, *ws_viewers, publisher):
            await peer.close()
