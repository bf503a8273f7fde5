"""Storage failures through the real websocket checkout: a database locked by another connection and
a purchase-log write that fails. Each checkout fails whole (no order,
no log entry, the units back in the cart), the loop keeps serving, and a retry succeeds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import aiohttp
import pytest
from commercekit import MUG, Clock, Rest, joined, running

from engine.app import App
from engine.config import Config
from tests.conftest import Client
from tests.looplag import MAX_STALL, loop_lag


@pytest.fixture
async def app(config: Config, clock: Clock) -> AsyncIterator[App]:
    async with running(config.replace(db_busy_timeout=0.5), clock) as engine:
        yield engine


async def _carted(app: App, stock: int = 1) -> Client:
    """A product of `stock` units, all of them in alice's cart."""
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": {**MUG, "stock": stock}})
    await host.close()
    alice, _ = await joined(app, sub="alice")
    ack = await alice.request({"type": "tap", "id": "t1", "product_id": "mug", "qty": stock})
    assert ack["type"] == "ack", ack
    return alice


async def _invariants(app: App, rest: Rest, alice: Client, stock: int) -> None:
    """The retry placed one order of every unit, logged once; the cart is empty, nothing left."""
    status, body = await rest.call("GET", "/api/rooms/demo/orders", app.admin_key)
    assert status == 200 and len(body["orders"]) == 1 and body["orders"][0]["quantity"] == stock
    status, log = await rest.call("GET", "/api/purchases", app.admin_key)
    assert [e["event"]["subject"] for e in log["entries"]] == [body["orders"][0]["id"]]
    assert (await alice.request({"type": "cart", "id": "c-after"}))["cart"]["lines"] == []
    status, product = await rest.call("GET", "/api/rooms/demo/products/mug")
    assert product["product"]["available"] == 0


async def _failed_whole(app: App, rest: Rest, alice: Client, stock: int) -> None:
    """Nothing of a failed checkout is left: no order, no log entry, the units still in the cart."""
    status, body = await rest.call("GET", "/api/rooms/demo/orders", app.admin_key)
    assert status == 200 and body["orders"] == []
    status, log = await rest.call("GET", "/api/purchases", app.admin_key)
    assert log["entries"] == []
    cart = (await alice.request({"type": "cart", "id": "c-failed"}))["cart"]
    assert [line["quantity"] for line in cart["lines"]] == [stock]


async def test_checkout_under_a_foreign_write_lock_is_unavailable_then_retry_succeeds(app: App, rest: Rest) -> None:
    alice = await _carted(app, stock=2)
    watcher, _ = await joined(app, sub="bob")
    blocker = sqlite3.connect(app.storage.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
    try:
        async with loop_lag() as lag:
            checkout = asyncio.ensure_future(alice.request({"type": "checkout", "id": "buy"}))
            async with aiohttp.ClientSession() as http:
                for _ in range(5):  # while the checkout waits for the lock, everything else answers
                    async with http.get(f"http://127.0.0.1:{app.http_port}/healthz") as response:
                        assert response.status == 200
                    assert (await watcher.request({"type": "cart", "id": "w"}))["type"] == "ack"
                    await asyncio.sleep(0.05)
            refused = await checkout
        assert refused["type"] == "error" and refused["code"] == "unavailable", refused
        assert lag.worst < MAX_STALL, f"the loop stalled {lag.worst * 1000:.0f} ms"
        await _failed_whole(app, rest, alice, 2)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    retried = await alice.request({"type": "checkout", "id": "buy"})
    assert retried["type"] == "ack" and retried["order"]["quantity"] == 2, retried
    await _invariants(app, rest, alice, 2)
    await alice.close()
    await watcher.close()


async def test_an_order_is_never_acknowledged_without_its_purchase_log_entry(app: App, rest: Rest) -> None:
    alice = await _carted(app)
    with sqlite3.connect(app.storage.path) as conn:  # the log table refuses writes for a while
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON purchase_log BEGIN"
                     " SELECT RAISE(ABORT, 'the log cannot take entries'); END")
    refused = await alice.request({"type": "checkout", "id": "buy"})
    assert refused["type"] == "error", refused
    await _failed_whole(app, rest, alice, 1)
    with sqlite3.connect(app.storage.path) as conn:
        conn.execute("DROP TRIGGER refuse")
    retried = await alice.request({"type": "checkout", "id": "buy"})
    assert retried["type"] == "ack", retried
    await _invariants(app, rest, alice, 1)
    await alice.close()


async def test_creating_a_room_under_a_foreign_write_lock_is_unavailable_then_retry_succeeds(
    app: App, rest: Rest
) -> None:
    blocker = sqlite3.connect(app.storage.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        async with loop_lag() as lag:
            status, body = await rest.call("POST", "/api/rooms", app.admin_key, {"id": "late"})
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert lag.worst < MAX_STALL, f"the loop stalled {lag.worst * 1000:.0f} ms"
        assert (await rest.call("GET", "/api/rooms/late"))[0] == 404
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    status, body = await rest.call("POST", "/api/rooms", app.admin_key, {"id": "late"})
    assert status == 201 and body["room"]["id"] == "late"
