"""Private rooms: open viewing stays the default, a private room's media needs a viewer token of the
room (WHEP Bearer, or the websocket's own token for ``offer``), and guest tokens do not open it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from media_peers import Publisher, Viewer, post_offer

from engine.app import App
from engine.config import Config
from signaling.tokens import mint
from tests.conftest import connect

H264_OPUS = {"video": "H264", "audio": "opus"}
ADMIN = {"Authorization": "Bearer test-admin"}


def _config(tmp_path: Path) -> Config:
    return Config(http_port=0, ws_port=0, data_dir=str(tmp_path / "data"), secret="s" * 32,
                  admin_key="test-admin", announce="127.0.0.1", demo_catalog=False)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    engine = App(_config(tmp_path))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def _call(http: aiohttp.ClientSession, app: App, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, f"http://127.0.0.1:{app.http_port}{path}", json=body, headers=ADMIN) as r:
        return r.status, await r.json()


async def _whep(http: aiohttp.ClientSession, app: App, room: str, token: str | None) -> tuple[int, Viewer, Any]:
    viewer = Viewer()
    response = await post_offer(http, f"http://127.0.0.1:{app.http_port}/whep/{room}", await viewer.offer(), token)
    if response.status == 201:
        await viewer.accept(await response.text())
        return 201, viewer, None
    return response.status, viewer, (await response.json(), response.headers.get("WWW-Authenticate"))


async def test_private_room_needs_a_viewer_token_on_whep_and_offer(app: App, h264: Any, opus: Any) -> None:
    async with aiohttp.ClientSession() as http:
        status, created = await _call(http, app, "POST", "/api/rooms", {"id": "vip", "private": True})
        assert status == 201 and created["room"]["private"] is True
        assert (await _call(http, app, "GET", "/api/rooms/vip"))[1]["private"] is True
        assert (await _call(http, app, "GET", "/api/rooms/demo"))[1]["private"] is False
        # Guests are not minted for a private room.
        async with http.post(f"http://127.0.0.1:{app.http_port}/api/rooms/vip/guest") as response:
            assert response.status == 403 and (await response.json())["error"]["code"] == "forbidden"

        publisher = Publisher(h264, opus)
        base = f"http://127.0.0.1:{app.http_port}"
        assert (await publisher.publish(http, base, "vip", created["stream_key"], H264_OPUS)).status == 201

        refused = []
        for token in (None, "not-a-jwt", mint(app.secret, "vip", "viewer", None, 60, guest=True),
                      mint(app.secret, "demo", "viewer", "someone", 60),
                      mint(app.secret, "vip", "service", "payments", 60)):
            status, viewer, (body, challenge) = await _whep(http, app, "vip", token)
            refused.append((status, body["error"]["code"]))
            if status == 401:
                assert challenge and challenge.startswith("Bearer")
            await viewer.close()
        assert refused == [(401, "unauthorized"), (401, "unauthorized"), (403, "forbidden"),
                           (403, "forbidden"), (403, "forbidden")]
        assert len(app.media.room("vip").viewers) == 0

        # A viewer token of the room opens the stream, over WHEP and over the websocket.
        status, whep_viewer, _ = await _whep(http, app, "vip", mint(app.secret, "vip", "viewer", "alice", 60))
        assert status == 201
        ws = await connect(app, mint(app.secret, "vip", "viewer", "bob", 60))
        ws_viewer = Viewer()
        ack = await ws.request({"type": "offer", "id": "o", "sdp": await ws_viewer.offer()}, timeout=10)
        assert ack["type"] == "ack", ack
        await ws_viewer.accept(ack["sdp"])
        guest = await connect(app, mint(app.secret, "vip", "viewer", None, 60, guest=True))
        stranger = Viewer()
        refusal = await guest.request({"type": "offer", "id": "g", "sdp": await stranger.offer()}, timeout=10)
        assert refusal["type"] == "error" and refusal["code"] == "forbidden"

        async def both_receive() -> None:
            while not all(v.log.count("video") >= 10 for v in (whep_viewer, ws_viewer)):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(both_receive(), 15)
        assert len(app.media.room("vip").viewers) == 2
        # A public room stays open to anyone with the URL.
        status, open_viewer, _ = await _whep(http, app, "demo", None)
        assert status == 201
        for peer in (whep_viewer, ws_viewer, stranger, open_viewer, publisher):
            await peer.close()
        await ws.close()
        await guest.close()


async def test_privacy_is_set_by_the_admin_and_survives_a_restart(tmp_path: Path) -> None:
    app = App(_config(tmp_path))
    await app.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.patch(f"http://127.0.0.1:{app.http_port}/api/rooms/demo", json={"private": True}) as r:
                assert r.status == 401  # the admin key is needed
            status, room = await _call(http, app, "PATCH", "/api/rooms/demo", {"private": True, "title": "VIP night"})
            assert status == 200 and room["private"] is True and room["title"] == "VIP night"
            status, body = await _call(http, app, "PATCH", "/api/rooms/demo", {"private": "yes"})
            assert status == 400 and body["error"]["code"] == "bad_request"
    finally:
        await app.stop()
    app = App(_config(tmp_path))
    await app.start()
    try:
        assert app.rooms.get("demo").private
        async with aiohttp.ClientSession() as http:
            status, _, (body, _) = await _whep(http, app, "demo", None)
            assert status == 401
            status, room = await _call(http, app, "PATCH", "/api/rooms/demo", {"private": False})
            assert room["private"] is False and room["title"] == "VIP night"
            status, viewer, _ = await _whep(http, app, "demo", None)
            assert status == 201
            await viewer.close()
    finally:
        await app.stop()
