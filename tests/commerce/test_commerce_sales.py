"""Issue point 3: flash sales start and end by themselves on the room clock, announce started,
sold out and ended, and carry their remaining quantity as a coalesced state event."""

from __future__ import annotations

import asyncio

from commercekit import MUG, Clock, Rest, events_until, joined, running

from engine.app import App
from engine.config import Config
from tests.conftest import token


async def test_a_sale_now_for_a_duration_runs_and_ends_on_the_clock(app: App, rest: Rest, clock: Clock) -> None:
    host, _ = await joined(app, "host", "hana")
    viewer, _ = await joined(app, sub="vera")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    ack = await host.request({"type": "sale.start", "id": 2,
                              "sale": {"id": "flash", "product_id": "mug", "price": 500, "quantity": 3,
                                       "per_user_limit": 2, "duration": 60}})
    assert ack["type"] == "ack"
    sale = ack["sale"]
    assert sale["id"] == "flash" and sale["state"] == "live" and sale["remaining"] == 3
    assert sale["currency"] == "EUR" and sale["ends_at"] == sale["starts_at"] + 60
    started = await viewer.recv_type("sale.started")
    assert started["id"] == "flash" and started["price"] == 500
    assert (await viewer.recv_type("sale.remaining"))["remaining"] == 3

    status, body = await rest.call("GET", "/api/rooms/demo/sales")
    assert status == 200 and [s["id"] for s in body["sales"]] == ["flash"]

    clock.advance(61)
    ended = await viewer.recv_type("sale.ended")
    assert ended["id"] == "flash" and ended["state"] == "ended"
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["state"] == "ended"
    await host.close()
    await viewer.close()


async def test_a_scheduled_sale_starts_by_itself(app: App, rest: Rest, clock: Clock) -> None:
    host_token = token(app, role="host")
    viewer, _ = await joined(app, sub="vera")
    await rest.call("PUT", "/api/rooms/demo/products/mug", host_token, MUG)
    status, body = await rest.call("POST", "/api/rooms/demo/sales", host_token,
                                   {"id": "later", "product_id": "mug", "price": 700, "quantity": 5,
                                    "starts_at": clock.now + 300, "ends_at": clock.now + 600})
    assert status == 201 and body["sale"]["state"] == "scheduled"
    assert (await viewer.recv_type("sale.scheduled"))["id"] == "later"
    early = await viewer.request({"type": "tap", "id": "t1", "sale_id": "later"})
    assert early["code"] == "sale_not_live"

    clock.advance(299)
    clock.advance(2)
    assert (await viewer.recv_type("sale.started"))["id"] == "later"
    ack = await viewer.request({"type": "tap", "id": "t2", "sale_id": "later"})
    assert ack["type"] == "ack" and ack["cart"]["total"] == 700

    # The host can also end it early; ending again changes nothing.
    status, body = await rest.call("POST", "/api/rooms/demo/sales/later/end", host_token)
    assert status == 200 and body["sale"]["state"] == "ended"
    assert (await viewer.recv_type("sale.ended"))["id"] == "later"
    status, body = await rest.call("POST", "/api/rooms/demo/sales/later/end", host_token)
    assert status == 200 and body["sale"]["state"] == "ended"
    late = await viewer.request({"type": "tap", "id": "t3", "sale_id": "later"})
    assert late["code"] == "sale_not_live"
    await viewer.close()


async def test_sold_out_is_announced_and_units_returning_resume_the_sale(app: App, rest: Rest) -> None:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    await host.request({"type": "sale.start", "id": 2,
                        "sale": {"id": "flash", "product_id": "mug", "price": 500, "quantity": 2, "duration": 60}})
    alice, _ = await joined(app, sub="alice")
    bob, _ = await joined(app, sub="bob")
    first = await alice.request({"type": "tap", "id": "a1", "sale_id": "flash"})
    assert first["type"] == "ack"
    await bob.request({"type": "tap", "id": "b1", "sale_id": "flash"})
    sold_out = await host.recv_type("sale.sold_out")
    assert sold_out == {**sold_out, "sale": "flash", "product": "mug", "remaining": 0}
    refused = await alice.request({"type": "tap", "id": "a2", "sale_id": "flash"})
    assert refused["code"] in ("sold_out", "limit_reached")
    status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
    assert body["sale"]["state"] == "sold_out" and body["sale"]["remaining"] == 0

    await alice.request({"type": "uncart", "id": "a3", "reservation": first["reservation"]})
    resumed = await host.recv_type("sale.resumed")
    assert resumed["remaining"] == 1
    for client in (host, alice, bob):
        await client.close()


async def test_remaining_is_coalesced_per_tick(config: Config, clock: Clock) -> None:
    """Forty taps inside one 300 ms bus tick reach a watcher as a few remaining-updates, the last
    one right, not as forty messages."""
    async with running(config.replace(tick_ms=300), clock) as app:
        host, _ = await joined(app, "host", "hana")
        await host.request({"type": "product.put", "id": 1, "product": MUG})
        await host.request({"type": "sale.start", "id": 2, "sale": {"id": "flash", "product_id": "mug",
                                                                    "price": 5, "quantity": 100, "duration": 60,
                                                                    "per_user_limit": 10}})
        tappers = [(await joined(app, sub=f"u{i}"))[0] for i in range(4)]
        await asyncio.sleep(0.35)  # let the sale's first state tick pass
        for n, tapper in enumerate(tappers):
            for k in range(10):
                await tapper.send({"type": "tap", "id": f"{n}-{k}", "sale_id": "flash"})
        for tapper in tappers:
            acks = await events_until(tapper, lambda m: str(m.get("re", "")).endswith("-9"))
            assert all(m["type"] == "ack" for m in acks if "re" in m)
        updates = await events_until(host, lambda m: m["type"] == "sale.remaining" and m["remaining"] == 60)
        remaining = [m for m in updates if m["type"] == "sale.remaining"]
        assert 1 <= len(remaining) <= 3, remaining
        for client in (host, *tappers):
            await client.close()


async def test_bad_sales_are_refused(app: App) -> None:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    cases = [
        ({"product_id": "nope", "price": 5, "quantity": 1, "duration": 60}, "not_found"),
        ({"product_id": "mug", "price": -5, "quantity": 1, "duration": 60}, "bad_request"),
        ({"product_id": "mug", "price": 5, "quantity": 0, "duration": 60}, "bad_request"),
        ({"product_id": "mug", "price": 5, "quantity": 1}, "bad_request"),
        ({"product_id": "mug", "price": 5, "quantity": 1, "duration": 60, "ends_at": 1e12}, "bad_request"),
        ({"product_id": "mug", "price": 5, "quantity": 1, "duration": 60, "per_user_limit": 0}, "bad_request"),
    ]
    for n, (sale, code) in enumerate(cases):
        error = await host.request({"type": "sale.start", "id": n, "sale": sale})
        assert error["type"] == "error" and error["code"] == code, (sale, error)
    assert (await host.request({"type": "sale.start", "id": 99, "sale": "x"}))["code"] == "bad_request"
    assert (await host.request({"type": "sale.end", "id": 100, "sale_id": "nope"}))["code"] == "not_found"
    await host.close()
