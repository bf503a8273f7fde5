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


async def test_websocket_viewer_is_told_to_offer_again_when_the_publishers_codec_changes(app, vp8, h264, opus):
    engine, media = app
    base = f"http://127.0.0.1:{engine.http_port}"
    key = engine.rooms.get("shop").stream_key
    async with aiohttp.ClientSession() as http:
        first = Publisher(vp8, opus)
        assert (await first.publish(http, base, "shop", key, {"video": "VP8", "audio": "opus"})).status == 201
        token = mint(engine.secret, "shop", "viewer")
        ws = await websockets.connect(f"ws://127.0.0.1:{engine.ws_port}/ws?token={token}")
        viewer = Viewer()
        ack = await request(ws, {"type": "offer", "id": "o1", "sdp": await viewer.offer()})
        await viewer.accept(ack["sdp"])
        await asyncio.wait_for(viewer.log.arrived.wait(), 10)
        assert viewer.log.codecs["video"] == "VP8"
        await first.close()  # the VP8 publisher leaves; an H264-only one (OBS) comes

        second = Publisher(h264, opus)
        assert (await second.publish(http, base, "shop", key, H264_OPUS)).status == 201
        while True:
            message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "media.renegotiate":
                break
        assert message["codecs"] == {"video": "H264", "audio": "opus"}
        assert message["reason"] == "codec_changed"
        seen = viewer.log.count("video")

        again = Viewer(decode=True)  # the page offers again on the same websocket
        ack = await request(ws, {"type": "offer", "id": "o2", "sdp": await again.offer()})
        assert ack["type"] == "ack", ack
        await again.accept(ack["sdp"])
        await asyncio.wait_for(again.first_decoded.wait(), 10)
        assert viewer.log.count("video") == seen, "the VP8 viewer was sent frames of the H264 publisher"
        await ws.close()
        for peer in (viewer, again, second):
            await peer.close()


async def test_room_viewers_count_every_path_once(app, h264, opus):
    engine, media = app
    base = f"http://127.0.0.1:{engine.http_port}"

    async def viewers() -> int:
        async with http.get(f"{base}/api/rooms/shop") as response:
            return (await response.json())["viewers"]

    async with aiohttp.ClientSession() as http:
        players = [Viewer(), Viewer()]  # two third-party WHEP players, no websocket
        for player in players:
            assert (await player.whep(http, base, "shop")).status == 201
        assert await viewers() == 2

        # a watch page: a websocket and a WHEP session with the same viewer token count once
        token = mint(engine.secret, "shop", "viewer", "page-1")
        ws = await websockets.connect(f"ws://127.0.0.1:{engine.ws_port}/ws?token={token}")
        snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert snapshot["viewers"] == 3
        page = Viewer()
        response = await http.post(f"{base}/whep/shop", data=await page.offer(),
                                   headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
        assert response.status == 201
        await page.accept(await response.text())
        assert await viewers() == 3

        while True:  # the room's viewers state event says the same
            event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            if event["type"] == "viewers" and event["count"] == 3:
                break

        refused = await http.post(f"{base}/whep/shop", data=await Viewer().offer(),
                                  headers={"Content-Type": "application/sdp", "Authorization": "Bearer nonsense"})
        assert refused.status == 401
        assert (await refused.json())["error"]["code"] in ("unauthorized", "token_expired")

        await players[0].close()
        await http.delete(base + response.headers["Location"])
        await page.close()
        while await viewers() != 2:
            await asyncio.sleep(0.05)
        await ws.close()
        while await viewers() != 1:
            await asyncio.sleep(0.05)
        await players[1].close()


async def test_a_websocket_viewers_session_is_not_an_http_resource(app):
    """Its id is named after the connection (guessable): a WHEP DELETE or PATCH must not reach it."""
    engine, media = app
    base = f"http://127.0.0.1:{engine.http_port}"
    token = mint(engine.secret, "shop", "viewer", "u1")
    ws = await websockets.connect(f"ws://127.0.0.1:{engine.ws_port}/ws?token={token}")
    viewer = Viewer()
    ack = await request(ws, {"type": "offer", "id": "o1", "sdp": await viewer.offer()})
    assert ack["type"] == "ack", ack
    await viewer.accept(ack["sdp"])
    (session_id,) = media.room("shop").viewers
    assert session_id.startswith("ws-")
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
        async with http.patch(f"{base}/whep/shop/{session_id}", data="a=end-of-candidates\r\n",
                              headers=headers) as patched:
            assert patched.status == 404
        async with http.delete(f"{base}/whep/shop/{session_id}") as deleted:
            assert deleted.status == 404
    assert list(media.room("shop").viewers) == [session_id]
    await ws.close()
    await viewer.close()


async def test_a_second_offer_on_the_websocket_joins_the_live_room_not_a_forgotten_one(app, h264, opus):
    """In a room without a publisher, ending the first session empties the room; the second must not join that one."""
    engine, media = app
    token = mint(engine.secret, "shop", "viewer", "again")
    async with websockets.connect(f"ws://127.0.0.1:{engine.ws_port}/ws?token={token}") as ws:
        first, again = Viewer(), Viewer()
        assert (await request(ws, {"type": "offer", "id": "o1", "sdp": await first.offer()}))["type"] == "ack"
        ack = await request(ws, {"type": "offer", "id": "o2", "sdp": await again.offer()})
        assert ack["type"] == "ack", ack
        await again.accept(ack["sdp"])
        room = media.room("shop")
        assert room is not None and len(room.viewers) == 1
        # the viewer gets the publisher who comes now
        async with aiohttp.ClientSession() as http:
            publisher = Publisher(h264, opus)
            key = engine.rooms.get("shop").stream_key
            base = f"http://127.0.0.1:{engine.http_port}"
            assert (await publisher.publish(http, base, "shop", key, H264_OPUS)).status == 201
            async with asyncio.timeout(10):
                while again.log.count("video") < 10:
                    await asyncio.sleep(0.02)
            await publisher.close()
        await first.close()
        await again.close()
