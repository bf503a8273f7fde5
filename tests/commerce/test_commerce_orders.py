"""Issue points 6 and 8: checkout into an order, payment by a service (confirm, cancel), the demo
auto-confirm, and the room's social proof (totals, bought in the last minute)."""

from __future__ import annotations

from commercekit import MUG, Clock, Rest, events_until, joined, request_seen, running

from engine.app import App
from engine.config import Config
from tests.conftest import Client, token


async def _sale(app: App, quantity: int = 5, limit: int = 3) -> Client:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    await host.request({"type": "sale.start", "id": 2, "sale": {
        "id": "flash", "product_id": "mug", "price": 500, "quantity": quantity, "per_user_limit": limit,
        "duration": 600}})
    return host


async def test_checkout_places_one_order_idempotently(app: App, rest: Rest) -> None:
    host = await _sale(app)
    alice, _ = await joined(app, sub="alice")
    await alice.request({"type": "tap", "id": "t1", "sale_id": "flash", "qty": 2})
    await alice.request({"type": "tap", "id": "t2", "product_id": "mug"})
    ack, before = await request_seen(alice, {"type": "checkout", "id": "buy-1"})
    assert ack["type"] == "ack"
    order = ack["order"]
    assert order["status"] == "placed" and order["user"] == "alice" and order["room"] == "demo"
    assert order["quantity"] == 3 and order["total"] == 2 * 500 + 1200 and order["currency"] == "EUR"
    assert sorted(line["unit_amount"] for line in order["lines"]) == [500, 1200]
    assert [m["id"] for m in before if m["type"] == "order.placed"] == [order["id"]]

    # A retry returns the same order; nothing is placed twice.
    again = await alice.request({"type": "checkout", "id": "buy-1"})
    assert again["order"]["id"] == order["id"]
    assert (await alice.request({"type": "checkout", "id": "buy-2"}))["code"] == "cart_empty"
    assert (await alice.request({"type": "cart", "id": "c"}))["cart"]["lines"] == []

    service = token(app, role="service", sub="payments")
    status, body = await rest.call("GET", "/api/rooms/demo/orders", service)
    assert status == 200 and [o["id"] for o in body["orders"]] == [order["id"]]
    status, body = await rest.call("GET", f"/api/rooms/demo/orders/{order['id']}", token(app, sub="alice"))
    assert status == 200 and body["order"]["id"] == order["id"]
    status, body = await rest.call("GET", f"/api/rooms/demo/orders/{order['id']}", token(app, sub="mallory"))
    assert status == 404
    status, body = await rest.call("GET", "/api/rooms/demo/orders", token(app, sub="alice"))
    assert status == 403
    # Sold units stay sold: the sale's remaining does not come back after the hold time.
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["remaining"] == 3
    await host.close()
    await alice.close()


async def test_a_payment_service_confirms_or_cancels(app: App, rest: Rest) -> None:
    host = await _sale(app)
    alice, _ = await joined(app, sub="alice")
    service = token(app, role="service", sub="payments")
    orders = []
    for n in range(2):
        await alice.request({"type": "tap", "id": f"t{n}", "sale_id": "flash"})
        orders.append((await alice.request({"type": "checkout", "id": f"o{n}"}))["order"]["id"])
    paid, cancelled = orders

    status, body = await rest.call("POST", f"/api/rooms/demo/orders/{paid}/confirm", service)
    assert status == 200 and body["order"]["status"] == "paid"
    assert (await alice.recv_type("order.paid"))["id"] == paid
    status, body = await rest.call("POST", f"/api/rooms/demo/orders/{paid}/confirm", service)
    assert status == 200 and body["order"]["status"] == "paid"  # payment callbacks retry

    status, body = await rest.call("POST", f"/api/rooms/demo/orders/{cancelled}/cancel", service)
    assert status == 200 and body["order"]["status"] == "cancelled"
    assert (await alice.recv_type("order.cancelled"))["id"] == cancelled
    await events_until(host, lambda m: m["type"] == "sale.remaining" and m["remaining"] == 4)

    status, body = await rest.call("POST", f"/api/rooms/demo/orders/{paid}/cancel", service)
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await rest.call("POST", "/api/rooms/demo/orders/o_nothing/confirm", service)
    assert status == 404
    status, body = await rest.call("POST", f"/api/rooms/demo/orders/{paid}/confirm", token(app, role="host"))
    assert status == 403
    status, body = await rest.call("POST", f"/api/rooms/demo/orders/{paid}/confirm", token(app, sub="alice"))
    assert status == 403
    status, body = await rest.call("GET", "/api/rooms/demo/orders?status=cancelled", service)
    assert [o["id"] for o in body["orders"]] == [cancelled]
    status, body = await rest.call("GET", "/api/rooms/demo/orders?status=lost", service)
    assert status == 400
    await host.close()
    await alice.close()


async def test_auto_confirm_pays_orders_as_they_are_placed(config: Config, clock: Clock) -> None:
    async with running(config.replace(auto_confirm=True), clock) as app:
        host = await _sale(app)
        alice, _ = await joined(app, sub="alice")
        await alice.request({"type": "tap", "id": "t", "sale_id": "flash"})
        ack, before = await request_seen(alice, {"type": "checkout", "id": "o"})
        assert ack["order"]["status"] == "paid"
        assert [m["type"] for m in before if m["type"].startswith("order.")] == ["order.placed", "order.paid"]
        await host.close()
        await alice.close()


async def test_totals_and_bought_in_the_last_minute_are_state_events(app: App, rest: Rest, clock: Clock) -> None:
    host = await _sale(app, quantity=10)
    buyers = [(await joined(app, sub=f"buyer{i}"))[0] for i in range(3)]
    for n, buyer in enumerate(buyers):
        await buyer.request({"type": "tap", "id": "t", "sale_id": "flash", "qty": n + 1})
        await buyer.request({"type": "checkout", "id": "o"})
    totals = await events_until(host, lambda m: m["type"] == "sales.totals" and m["orders"] == 3)
    assert totals[-1]["units"] == 6 and totals[-1]["revenue"] == {"EUR": 3000}
    assert totals[-1]["key"] == "sales.totals"
    recent = [m for m in totals if m["type"] == "sales.recent"]
    if not recent or recent[-1]["units"] != 6:
        recent = await events_until(host, lambda m: m["type"] == "sales.recent" and m["units"] == 6)
    assert recent[-1]["window"] == 60

    _, snap = await joined(app, sub="late")
    assert snap["totals"]["orders"] == 3 and snap["recent"]["units"] == 6
    assert snap["state"]["sales.totals"]["units"] == 6

    clock.advance(61)  # the minute passes: nobody bought in the last one
    await events_until(host, lambda m: m["type"] == "sales.recent" and m["units"] == 0)
    status, body = await rest.call("GET", "/api/rooms/demo/sales")
    assert body["totals"]["orders"] == 3 and body["recent"]["units"] == 0
    for client in (host, *buyers):
        await client.close()


async def test_a_checkout_retried_on_another_connection_at_once_places_one_order(app: App, rest: Rest) -> None:
    host = await _sale(app)
    phone, _ = await joined(app, sub="alice")
    laptop, _ = await joined(app, sub="alice")
    await phone.request({"type": "tap", "id": "t", "sale_id": "flash", "qty": 2})
    for client in (phone, laptop):  # both in flight before either is answered
        await client.send({"type": "checkout", "id": "same"})
    first = (await events_until(phone, lambda m: m.get("re") == "same"))[-1]
    second = (await events_until(laptop, lambda m: m.get("re") == "same"))[-1]
    assert first["type"] == second["type"] == "ack"
    assert first["order"]["id"] == second["order"]["id"] and first["order"]["quantity"] == 2
    status, body = await rest.call("GET", "/api/rooms/demo/orders", app.admin_key)
    assert [o["id"] for o in body["orders"]] == [first["order"]["id"]]
    for client in (host, phone, laptop):
        await client.close()
