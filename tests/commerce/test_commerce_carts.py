"""Issue points 4 and 5: tap to cart (atomic, limited, idempotent) and the viewer's own cart,
including reservations expiring on the room clock."""

from __future__ import annotations

import asyncio

from commercekit import MUG, Clock, Rest, events_until, joined, no_message, tap

from engine.app import App
from tests.conftest import Client


async def _shop(app: App, quantity: int = 3, limit: int = 2) -> Client:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    ack = await host.request({"type": "sale.start", "id": 2, "sale": {
        "id": "flash", "product_id": "mug", "price": 500, "quantity": quantity, "per_user_limit": limit,
        "duration": 600}})
    assert ack["type"] == "ack"
    return host


async def test_tap_reserves_into_the_cart_once_per_request_id(app: App, rest: Rest) -> None:
    host = await _shop(app)
    alice, _ = await joined(app, sub="alice")
    ack, line = await tap(alice, {"id": "tap-1", "sale_id": "flash"})
    assert line is not None
    assert line == {**line, "product": "mug", "sale": "flash", "quantity": 1, "unit_amount": 500, "amount": 500,
                    "currency": "EUR"}
    # The ack says what changed: which line (sent just before it, not repeated) and the cart's totals.
    assert ack == {"type": "ack", "re": "tap-1", "reservation": line["reservation"],
                   "cart": {"quantity": 1, "total": 500, "currency": "EUR"}}

    # A retry (same id) answers the same, adds no line and reserves nothing more.
    again, added = await tap(alice, {"id": "tap-1", "sale_id": "flash"})
    assert again == ack and added is None
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["remaining"] == 2

    # Catalog taps (no sale) use the product's own stock and price.
    product, line = await tap(alice, {"id": "tap-2", "product_id": "mug", "qty": 3})
    assert line is not None and line["unit_amount"] == 1200 and line["sale"] is None
    assert product["cart"] == {"quantity": 4, "total": 500 + 3600, "currency": "EUR"}
    # The cart the user asks for agrees with the ack's totals.
    cart = (await alice.request({"type": "cart", "id": "c"}))["cart"]
    assert {k: cart[k] for k in ("quantity", "total", "currency")} == product["cart"]
    assert [ln["reservation"] for ln in cart["lines"]] == [ack["reservation"], product["reservation"]]
    status, body = await rest.call("GET", "/api/rooms/demo/products/mug")
    assert body["product"]["available"] == 7
    await host.close()
    await alice.close()


async def test_per_user_limit_and_sold_out_are_enforced(app: App, rest: Rest) -> None:
    host = await _shop(app, quantity=3, limit=2)
    alice, _ = await joined(app, sub="alice")
    bob, _ = await joined(app, sub="bob")
    assert (await alice.request({"type": "tap", "id": 1, "sale_id": "flash", "qty": 2}))["type"] == "ack"
    limited = await alice.request({"type": "tap", "id": 2, "sale_id": "flash"})
    assert limited["type"] == "error" and limited["code"] == "limit_reached" and limited["re"] == 2
    too_many = await bob.request({"type": "tap", "id": 1, "sale_id": "flash", "qty": 2})
    assert too_many["code"] == "sold_out"
    assert (await bob.request({"type": "tap", "id": 2, "sale_id": "flash"}))["type"] == "ack"
    assert (await bob.request({"type": "tap", "id": 3, "sale_id": "flash"}))["code"] == "sold_out"
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["remaining"] == 0
    for client in (host, alice, bob):
        await client.close()


async def test_concurrent_taps_never_oversell(app: App, rest: Rest) -> None:
    host = await _shop(app, quantity=25, limit=3)
    tappers = [(await joined(app, sub=f"user{i}"))[0] for i in range(12)]
    for tapper in tappers:  # pipelined: every tap is in flight at once
        for k in range(4):
            await tapper.send({"type": "tap", "id": f"k{k}", "sale_id": "flash"})
    won = 0
    codes: dict[str, int] = {}
    for tapper in tappers:
        replies = [m for m in await events_until(tapper, lambda m: m.get("re") == "k3") if "re" in m]
        assert len(replies) == 4
        acks = [reply for reply in replies if reply["type"] == "ack"]
        won += max((ack["cart"]["quantity"] for ack in acks), default=0)  # the tapper's cart, once all answered
        assert len(acks) == max((ack["cart"]["quantity"] for ack in acks), default=0)  # one unit per tap
        for reply in replies:
            if reply["type"] == "error":
                codes[reply["code"]] = codes.get(reply["code"], 0) + 1
    assert won == 25
    assert set(codes) <= {"sold_out", "limit_reached"} and sum(codes.values()) == 48 - 25
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["remaining"] == 0
    for client in (host, *tappers):
        await client.close()


async def test_cart_events_reach_every_connection_of_that_user_only(app: App, rest: Rest) -> None:
    host = await _shop(app)
    phone, _ = await joined(app, sub="alice")
    laptop, _ = await joined(app, sub="alice")
    bob, _ = await joined(app, sub="bob")
    ack, line = await tap(phone, {"id": "t", "sale_id": "flash"})
    added = await laptop.recv_type("cart.added")
    assert added == {**line, "type": "cart.added"} and added["reservation"] == ack["reservation"]
    await no_message(bob, "cart.added")

    cart = await laptop.request({"type": "cart", "id": "c"})
    assert cart["cart"]["lines"] == [line]
    removed = await laptop.request({"type": "uncart", "id": "u", "reservation": ack["reservation"]})
    assert removed["cart"]["lines"] == []
    assert (await phone.recv_type("cart.removed"))["reservation"] == ack["reservation"]
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["remaining"] == 3
    again = await phone.request({"type": "uncart", "id": "u2", "reservation": ack["reservation"]})
    assert again["code"] == "not_found"
    # Someone else's reservation cannot be removed.
    theirs = await bob.request({"type": "tap", "id": "b", "sale_id": "flash"})
    stolen = await phone.request({"type": "uncart", "id": "u3", "reservation": theirs["reservation"]})
    assert stolen["code"] == "not_found"
    for client in (host, phone, laptop, bob):
        await client.close()


async def test_reservations_expire_on_the_room_clock(app: App, rest: Rest, clock: Clock) -> None:
    host = await _shop(app)
    alice, _ = await joined(app, sub="alice")
    other_tab, _ = await joined(app, sub="alice")
    ack, line = await tap(alice, {"id": "t", "sale_id": "flash", "qty": 2})
    reservation = ack["reservation"]
    assert line is not None and line["expires_at"] == clock.now + app.config.hold_seconds
    await events_until(host, lambda m: m["type"] == "sale.remaining" and m["remaining"] == 1)

    clock.advance(app.config.hold_seconds - 1)
    await asyncio.sleep(0.1)  # several room ticks: nothing expires early
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["remaining"] == 1

    clock.advance(2)
    for client in (alice, other_tab):
        expired = await client.recv_type("cart.expired")
        assert expired["reservation"] == reservation
    await events_until(host, lambda m: m["type"] == "sale.remaining" and m["remaining"] == 3)
    cart = await alice.request({"type": "cart", "id": "c"})
    assert cart["cart"]["quantity"] == 0
    assert (await alice.request({"type": "checkout", "id": "o"}))["code"] == "cart_empty"
    # The units are back for everyone, and the snapshot agrees.
    _, snap = await joined(app, sub="bob")
    assert snap["sales"][0]["remaining"] == 3 and snap["cart"]["lines"] == []
    for client in (host, alice, other_tab):
        await client.close()


async def test_a_snapshot_carries_the_connecting_users_cart(app: App) -> None:
    host = await _shop(app)
    alice, _ = await joined(app, sub="alice")
    _, line = await tap(alice, {"id": "t", "sale_id": "flash"})
    _, snap = await joined(app, sub="alice")
    assert snap["cart"]["lines"] == [line]
    assert snap["sales"][0] == {**snap["sales"][0], "id": "flash", "remaining": 2, "state": "live"}
    assert snap["totals"] == {"orders": 0, "units": 0, "revenue": {}}
    assert snap["recent"]["units"] == 0
    _, other = await joined(app, sub="bob")
    assert other["cart"]["lines"] == []
    await host.close()
    await alice.close()
