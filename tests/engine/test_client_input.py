"""Numbers and ids from clients: only ASCII digits of bounded length are numbers, and ids match whole."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from engine.app import App
from signaling import protocol
from tests.conftest import connect, token

ADMIN = {"Authorization": "Bearer test-admin"}
NOT_NUMBERS = ["²", "١٢", "1²", "+1", "-1", " 1", "1_0", "9" * 5000, ""]


async def _get(app: App, path: str) -> tuple[int, Any]:
    async with (aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{app.http_port}{path}", headers=ADMIN) as response):
        return response.status, await response.json()


@pytest.mark.parametrize("raw", NOT_NUMBERS)
async def test_rest_numbers_are_ascii_digits(engine: App, raw: str) -> None:
    for path in (f"/api/rooms/demo/orders?limit={quote(raw)}", f"/api/rooms/demo/orders?offset={quote(raw)}",
                 f"/api/purchases?limit={quote(raw)}", f"/api/purchases?after={quote(raw)}"):
        status, body = await _get(engine, path)
        if raw == "" and "after=" in path:
            assert status == 200  # an empty position means from the start
            continue
        assert status == 400, (path, status, body)
        assert body["error"]["code"] == "bad_request"
    assert (await _get(engine, "/api/rooms/demo/orders?limit=10&offset=0"))[0] == 200
    assert (await _get(engine, "/api/purchases?limit=10&after=0"))[0] == 200


@pytest.mark.parametrize("raw", NOT_NUMBERS)
async def test_websocket_since_is_ascii_digits(engine: App, raw: str) -> None:
    url = f"ws://127.0.0.1:{engine.ws_port}/ws?token={token(engine)}&since={quote(raw)}"
    async with websockets.connect(url, max_size=None) as ws:
        message = orjson.loads(await ws.recv())
        if raw == "":  # parse_qs drops an empty value: no since, a snapshot
            assert message["type"] == "snapshot"
            return
        assert message["type"] == "error" and message["code"] == "bad_request"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == protocol.CLOSE_BAD_REQUEST


@pytest.mark.parametrize("raw", NOT_NUMBERS)
async def test_websocket_subscribe_after_is_ascii_digits(engine: App, raw: str) -> None:
    service = await connect(engine, token(engine, room="*", role="service", sub="ledger"), query="&room=*")
    assert (await service.recv())["type"] == "hello"
    reply = await service.request({"type": "subscribe", "id": 1, "after": raw})
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    assert (await service.request({"type": "subscribe", "id": 2, "after": "0"}))["type"] == "ack"
    await service.close()


@pytest.mark.parametrize("room_id", ["demo\n", "shop\n", "shop\r\n", "\nshop", "sh\nop", "shop ", "Shop", "-shop"])
async def test_room_ids_match_whole(engine: App, room_id: str) -> None:
    async with (aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{engine.http_port}/api/rooms", json={"id": room_id},
                          headers=ADMIN) as response):
        body = await response.json()
        assert response.status == 400 and body["error"]["code"] == "bad_request", body
    assert [room.id for room in engine.rooms.list()] == ["demo"]
    status, listed = await _get(engine, "/api/rooms")
    assert status == 200 and [room["id"] for room in listed["rooms"]] == ["demo"]
