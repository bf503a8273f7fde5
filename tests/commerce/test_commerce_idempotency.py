"""A retried tap finds its first outcome for the whole hold time, however much other traffic the
room and the node carry meanwhile; the memory that makes this work is bounded per user and by time."""

from __future__ import annotations

import asyncio

from commercekit import MUG, Clock, Rest, joined, no_message, request_seen, tap

from engine.app import App
from overlays.events import DomainError

GONE = {**MUG, "id": "gone", "title": "Gone", "stock": 0}
CROWD = 10


async def crowd_taps(app: App, count: int, start: int = 0) -> None:
    """`count` taps by other users straight into the commerce runtime (the websocket path would
    cost a round trip each): a few users, a fresh request id each, all refused as sold out."""
    tap = app.commerce.tap
    for n in range(start, start + count):
        refused = await tap("demo", f"crowd{n % CROWD}", f"req{n}", product_id="gone")
        assert type(refused) is DomainError and refused.code == "sold_out"
        if n % 5000 == 0:
            await asyncio.sleep(0)  # let the websocket server breathe


async def test_a_retried_tap_survives_100k_other_taps(app: App, rest: Rest, clock: Clock) -> None:
    host, _ = await joined(app, "host", "hana")
    for product in (MUG, GONE):
        assert (await host.request({"type": "product.put", "id": product["id"], "product": product}))["type"] == "ack"
    alice, _ = await joined(app, sub="alice")
    bob, _ = await joined(app, sub="bob")
    first, line = await tap(alice, {"id": "t1", "product_id": "mug"})
    assert first["type"] == "ack" and line is not None
    assert (await bob.request({"type": "tap", "id": "b1", "product_id": "mug", "qty": 4}))["type"] == "ack"
    while (await alice.recv_type("product.stock"))["available"] != 5:  # the room now says 5 left
        pass

    # Past the size of any room-wide memory: a retry must not publish its stale figure (9 left).
    await crowd_taps(app, 20_000)
    again, seen = await request_seen(alice, {"type": "tap", "id": "t1", "product_id": "mug"})
    assert again == first
    assert not [m for m in seen if m["type"] == "cart.added" or m.get("product") == "mug"]
    await no_message(alice, "product.stock")  # (the crowd's taps changed no figure)

    # Past the size of any node-wide memory, and late in the hold time (the room's clock has
    # ticked past most of it): a retry must not reserve a second time.
    await crowd_taps(app, 81_000, start=20_000)
    clock.advance(app.config.hold_seconds - 1)
    await asyncio.sleep(3 * app.config.commerce_tick_ms / 1000)  # room ticks run on the new time
    again, seen = await request_seen(alice, {"type": "tap", "id": "t1", "product_id": "mug"})
    assert again == first
    assert not [m for m in seen if m["type"] == "cart.added" or m.get("product") == "mug"]
    await no_message(alice, "product.stock")  # (the crowd's taps changed no figure)
    status, body = await rest.call("GET", "/api/rooms/demo/products/mug")
    assert body["product"]["available"] == 5
    assert (await alice.request({"type": "cart", "id": "c"}))["cart"]["lines"] == [line]

    # The memory is bounded per user (the crowd forgot its own oldest ids) and by time.
    remembered = app.commerce.stock._requests["demo"]
    assert len(remembered) <= CROWD * app.config.max_user_requests + 2
    clock.advance(1)
    await alice.recv_type("cart.expired")
    assert "demo" not in app.commerce.stock._requests
    for client in (host, alice, bob):
        await client.close()
