"""The unit price is locked into the reservation at tap time: a host who changes the price between
tap and checkout (over the websocket or REST) changes it for later taps only."""

from __future__ import annotations

from commercekit import MUG, Rest, joined, request_seen, tap

from engine.app import App
from tests.conftest import token

EXPENSIVE = 99900


async def test_checkout_charges_the_price_the_buyer_tapped_at(app: App, rest: Rest) -> None:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": {**MUG, "price": 1500}})
    alice, _ = await joined(app, sub="alice")
    ack, line = await tap(alice, {"id": "t1", "product_id": "mug", "qty": 2})
    assert line is not None and (line["unit_amount"], line["amount"]) == (1500, 3000)
    assert ack["cart"]["total"] == 3000

    # The host raises the price over the websocket, then again over REST.
    assert (await host.request({"type": "product.put", "id": 2, "product": {"id": "mug", "price": 50000}}))[
        "product"]["price"] == 50000
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", token(app, role="host"),
                                   {"price": EXPENSIVE})
    assert status == 200 and body["product"]["price"] == EXPENSIVE

    # The cart still shows the locked price; a retry of the tap answers it too; a new tap pays the new one.
    cart = (await alice.request({"type": "cart", "id": "c"}))["cart"]
    assert cart["lines"] == [line] and cart["total"] == 3000
    assert (await alice.request({"type": "tap", "id": "t1", "product_id": "mug", "qty": 2})) == ack
    bob, snap = await joined(app, sub="bob")
    assert snap["products"][0]["price"] == EXPENSIVE
    later, bobs = await tap(bob, {"id": "t1", "product_id": "mug"})
    assert bobs is not None and bobs["unit_amount"] == EXPENSIVE and later["cart"]["total"] == EXPENSIVE

    ack, seen = await request_seen(alice, {"type": "checkout", "id": "pay-1"})
    order = ack["order"]
    assert order["total"] == 3000 and order["lines"][0]["unit_amount"] == 1500
    assert [m for m in seen if m["type"] == "order.placed"][0]["total"] == 3000
    status, body = await rest.call("GET", f"/api/rooms/demo/orders/{order['id']}", app.admin_key)
    assert status == 200 and body["order"]["total"] == 3000
    # what the purchase log says to the payment service
    status, body = await rest.call("GET", "/api/purchases", app.admin_key)
    placed = [e["event"]["data"] for e in body["entries"] if e["event"]["type"] == "livecart.order.placed"]
    assert [(p["total_amount"], p["items"][0]["unit_amount"]) for p in placed] == [(3000, 1500)]
    for client in (host, alice, bob):
        await client.close()


async def test_a_snapshot_after_reconnect_shows_the_locked_price(app: App, rest: Rest) -> None:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": {**MUG, "price": 1500}})
    await host.request({"type": "sale.start", "id": 2, "sale": {
        "id": "flash", "product_id": "mug", "price": 700, "quantity": 5, "duration": 600}})
    alice, _ = await joined(app, sub="alice")
    assert (await tap(alice, {"id": "t1", "sale_id": "flash"}))[1]["unit_amount"] == 700
    assert (await tap(alice, {"id": "t2", "product_id": "mug"}))[0]["cart"]["total"] == 700 + 1500
    await host.request({"type": "product.put", "id": 3, "product": {"id": "mug", "price": 3000}})
    await alice.close()
    alice, snap = await joined(app, sub="alice")
    assert [(ln["sale"], ln["unit_amount"]) for ln in snap["cart"]["lines"]] == [("flash", 700), (None, 1500)]
    assert snap["cart"]["total"] == 2200
    # a product whose units are in carts keeps its currency (the locked prices are in it)
    changed = await host.request({"type": "product.put", "id": 4, "product": {"id": "mug", "currency": "USD"}})
    assert changed["type"] == "error" and changed["code"] == "conflict"
    await alice.close()
    await host.close()
