"""Bad input never changes stock: unknown products, bad quantities, ended sales, viewers trying
host actions, forged or other-room tokens, tap floods."""

from __future__ import annotations

import asyncio

import aiohttp
import jwt
import pytest
from commercekit import MUG, Clock, Rest, joined, running

from engine.app import App
from engine.config import Config
from tests.conftest import Client, connect, token


async def _stock(rest: Rest) -> tuple[int, int]:
    _, product = await rest.call("GET", "/api/rooms/demo/products/mug")
    _, sale = await rest.call("GET", "/api/rooms/demo/sales/flash")
    return product["product"]["available"], sale["sale"]["remaining"]


async def _setup(app: App) -> Client:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    await host.request({"type": "sale.start", "id": 2, "sale": {"id": "flash", "product_id": "mug", "price": 500,
                                                                "quantity": 5, "duration": 60}})
    await host.request({"type": "sale.start", "id": 3, "sale": {"id": "gone", "product_id": "mug", "price": 500,
                                                                "quantity": 5, "duration": 60}})
    await host.request({"type": "sale.end", "id": 4, "sale_id": "gone"})
    return host


@pytest.mark.parametrize("tap, code", [
    ({"product_id": "nope"}, "not_found"),
    ({"sale_id": "nope"}, "not_found"),
    ({"sale_id": "gone"}, "sale_not_live"),
    ({"sale_id": "flash", "product_id": "cap"}, "bad_request"),
    ({"sale_id": "flash", "qty": -1}, "bad_request"),
    ({"sale_id": "flash", "qty": 0}, "bad_request"),
    ({"sale_id": "flash", "qty": 10**12}, "bad_request"),
    ({"product_id": "mug", "qty": 21}, "bad_request"),
    ({"product_id": "mug", "qty": "2"}, "bad_request"),
    ({"product_id": "mug", "qty": 1.5}, "bad_request"),
    ({"product_id": "mug", "qty": True}, "bad_request"),
    ({"product_id": 7}, "bad_request"),
    ({"sale_id": ["flash"]}, "bad_request"),
    ({}, "bad_request"),
])
async def test_bad_taps_are_refused_with_a_code(app: App, rest: Rest, tap: dict, code: str) -> None:
    host = await _setup(app)
    before = await _stock(rest)
    viewer, _ = await joined(app, sub="vera")
    reply = await viewer.request({"type": "tap", "id": "x", **tap})
    assert reply["type"] == "error" and reply["code"] == code and reply["re"] == "x"
    assert await _stock(rest) == before
    # The room is fine: the next good tap works.
    assert (await viewer.request({"type": "tap", "id": "y", "sale_id": "flash"}))["type"] == "ack"
    await host.close()
    await viewer.close()


async def test_taps_without_a_request_id_and_bad_cart_actions(app: App, rest: Rest) -> None:
    host = await _setup(app)
    before = await _stock(rest)
    viewer, _ = await joined(app, sub="vera")
    await viewer.send({"type": "tap", "sale_id": "flash"})
    assert (await viewer.recv_type("error"))["code"] == "bad_request"
    assert (await viewer.request({"type": "uncart", "id": 1, "reservation": 5}))["code"] == "bad_request"
    assert (await viewer.request({"type": "uncart", "id": 2}))["code"] == "bad_request"
    assert (await viewer.request({"type": "checkout", "id": 3}))["code"] == "cart_empty"
    assert await _stock(rest) == before
    await host.close()
    await viewer.close()


async def test_viewers_cannot_run_the_shop(app: App, rest: Rest) -> None:
    host = await _setup(app)
    before = await _stock(rest)
    viewer, _ = await joined(app, sub="vera")
    for n, action in enumerate([
        {"type": "product.put", "product": {**MUG, "stock": 0}},
        {"type": "product.remove", "product_id": "mug"},
        {"type": "pin", "tag": {"product_id": "mug", "x": 0.5, "y": 0.5}},
        {"type": "unpin", "tag_id": "t"},
        {"type": "sale.start", "sale": {"product_id": "mug", "price": 1, "quantity": 5, "duration": 60}},
        {"type": "sale.end", "sale_id": "flash"},
        {"type": "subscribe"},
    ]):
        reply = await viewer.request({**action, "id": n})
        assert reply["type"] == "error" and reply["code"] == "forbidden", action
    viewer_token = token(app, sub="vera")
    for method, path in [("PUT", "/api/rooms/demo/products/mug"), ("DELETE", "/api/rooms/demo/products/mug"),
                         ("POST", "/api/rooms/demo/sales/flash/end"), ("POST", "/api/rooms/demo/sales")]:
        status, body = await rest.call(method, path, viewer_token, {**MUG, "stock": 0})
        assert status == 403 and body["error"]["code"] == "forbidden"
    assert await _stock(rest) == before
    await host.close()
    await viewer.close()


async def test_forged_and_other_room_tokens_are_refused(app: App, rest: Rest) -> None:
    host = await _setup(app)
    before = await _stock(rest)
    await app.rooms.create("other")
    claims = {"room": "demo", "role": "host", "sub": "eve", "exp": 4_000_000_000}
    forged = jwt.encode(claims, "not-the-server-secret-but-long-enough-0123456789", algorithm="HS256")
    for tok, query in [(forged, ""), (token(app, "other", "host"), "&room=demo")]:
        client = await connect(app, tok, query)
        refusal = await client.recv()
        assert refusal["type"] == "error" and refusal["code"] == "unauthorized"
        await asyncio.wait_for(client.ws.wait_closed(), 5)
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", forged, {"stock": 0})
    assert status == 401
    status, body = await rest.call("POST", "/api/rooms/demo/sales/flash/end", token(app, "other", "host"))
    assert status == 403
    # A host of another room acts in that room only.
    other_host, _ = await joined(app, "host", "olga", room="other")
    reply = await other_host.request({"type": "sale.end", "id": 1, "sale_id": "flash"})
    assert reply["code"] == "not_found"
    assert await _stock(rest) == before
    await host.close()
    await other_host.close()


async def test_tap_floods_are_rate_limited_per_connection(config: Config, clock: Clock) -> None:
    async with running(config.replace(tap_rate=2.0, tap_burst=3), clock) as app:
        host = await _setup(app)
        flooder, _ = await joined(app, sub="flo")
        for n in range(20):
            await flooder.send({"type": "tap", "id": n, "product_id": "mug"})
        replies = [await _reply(flooder, n) for n in range(20)]
        acks = [r for r in replies if r["type"] == "ack"]
        limited = [r for r in replies if r["type"] == "error"]
        assert len(acks) == 3 and {r["code"] for r in limited} == {"rate_limited"}
        assert acks[-1]["cart"]["quantity"] == 3  # only the admitted taps reserved anything
        # Another connection has its own budget.
        calm, _ = await joined(app, sub="calm")
        assert (await calm.request({"type": "tap", "id": "c", "product_id": "mug"}))["type"] == "ack"
        async with aiohttp.ClientSession() as http:
            assert (await _stock(Rest(app, http)))[0] == 10 - 4
        for client in (host, flooder, calm):
            await client.close()


async def _reply(client: Client, request_id: int) -> dict:
    while True:
        message = await client.recv()
        if message.get("re") == request_id:
            return message

