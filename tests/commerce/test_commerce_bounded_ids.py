"""Malformed ids are refused before any lookup, and no refusal echoes a client's input whole: a
tap's refusal is remembered for the hold time, so its size must not grow with what was sent."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import websockets
from commercekit import MUG, Rest, joined

from engine.app import App
from tests.conftest import token

HUGE = "\x00" * 65_000
SMALL = 200  # an error message quoting a client value stays under this many characters


async def _packed(app: App, sub: str) -> websockets.ClientConnection:
    ws = await websockets.connect(f"ws://127.0.0.1:{app.ws_port}/ws?token={token(app, sub=sub)}",
                                  subprotocols=["livecart.msgpack"], max_size=None, max_queue=None)
    assert msgpack.unpackb(await ws.recv())["type"] == "snapshot"
    return ws


async def _request(ws: websockets.ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(msgpack.packb(message))
    async with asyncio.timeout(5):
        while True:
            reply = msgpack.unpackb(await ws.recv())
            if reply.get("re") == message["id"] and reply["type"] in ("ack", "error"):
                return reply


@pytest.mark.parametrize("fields", [
    {"product_id": HUGE},
    {"sale_id": HUGE},
    {"product_id": "mug\x00"},
    {"sale_id": "a b"},
    {"product_id": "x" * 65},
])
async def test_malformed_tap_ids_are_a_small_bad_request(app: App, fields: dict[str, Any]) -> None:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    ws = await _packed(app, "mallory")
    first = await _request(ws, {"type": "tap", "id": "r1", **fields})
    assert first["code"] == "bad_request" and len(first["message"]) < SMALL and "\x00" not in first["message"]
    # The remembered refusal (a retry gets it back) is the same small one.
    assert await _request(ws, {"type": "tap", "id": "r1", **fields}) == first
    assert (await _request(ws, {"type": "tap", "id": "r2", "product_id": "mug"}))["type"] == "ack"
    await ws.close()
    await host.close()


async def test_remembered_refusals_stay_small(app: App) -> None:
    """Many refused taps with huge ids hold only small answers for the hold time."""
    ws = await _packed(app, "mallory")
    for i in range(50):
        reply = await _request(ws, {"type": "tap", "id": f"r{i}", "product_id": HUGE})
        assert reply["code"] == "bad_request"
    remembered = app.commerce.stock._requests["demo"]._users["mallory"]  # the one memory of taps
    assert len(remembered) == 50
    assert sum(len(result.message) for _, result in remembered.values()) < 50 * SMALL
    await ws.close()


@pytest.mark.parametrize("message", [
    {"type": "uncart", "reservation": HUGE},
    {"type": "checkout", "id": "c\x00" * 60},
    {"type": "product.remove", "product_id": HUGE},
    {"type": "unpin", "tag_id": HUGE},
    {"type": "sale.end", "sale_id": HUGE},
    {"type": HUGE},
])
async def test_no_websocket_error_echoes_a_huge_value(app: App, message: dict[str, Any]) -> None:
    ws = await _packed(app, "hana")
    reply = await _request(ws, {"id": 9, **message})
    assert reply["type"] == "error" and len(reply["message"]) < SMALL
    await ws.close()


@pytest.mark.parametrize("path", [
    "/api/rooms/demo/products/" + "p" * 4000,
    "/api/rooms/demo/sales/" + "s" * 4000,
    "/api/rooms/demo/orders/" + "o" * 4000,
    "/api/rooms/" + "r" * 4000,
    "/api/rooms/" + "r" * 4000 + "/products",
])
async def test_no_http_error_echoes_a_long_id(app: App, rest: Rest, admin: str, path: str) -> None:
    status, body = await rest.call("GET", path, admin)
    assert status in (400, 404) and len(body["error"]["message"]) < SMALL


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/rooms/" + "r" * 4000 + "/stream-key"),
    ("PATCH", "/api/rooms/" + "r" * 4000),
])
async def test_room_admin_errors_do_not_echo_a_long_id(app: App, rest: Rest, admin: str, method: str,
                                                       path: str) -> None:
    status, body = await rest.call(method, path, admin, {"title": "t"})
    assert status in (400, 404) and len(body["error"]["message"]) < SMALL
