"""Two real `livecart serve --redis-url` processes on one Redis prefix, both serving the room before
its host changes anything: a sale the host starts through one node is sold through both, exactly
its units, within each buyer's limit, each order once in the purchase stream; and a product added
through either node is in the other's REST answers and snapshots."""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster_nodes import Node
from tests.conftest import Client, RedisTarget
from tests.engine.test_cli import start_server

ADMIN = "cross-node-admin-key"
MUG = {"title": "Mug", "price": 1200, "currency": "EUR", "stock": 1000}
CAP = {"title": "Cap", "price": 900, "currency": "EUR", "stock": 5}
UNITS, LIMIT = 100, 3
BUYERS = 24  # per node: 48 buyers wanting up to 144 units of 100
TAPS = 6  # per buyer, each retried once with its request id half of the time


def serve(processes: list[subprocess.Popen[str]], data_dir: Path, node_id: str, redis: RedisTarget,
          *extra: str) -> Node:
    proc, http_port, ws_port, _ = start_server(
        data_dir, "--redis-url", redis.url, "--redis-prefix", redis.prefix, "--node-id", node_id,
        "--admin-key", ADMIN, "--no-demo-catalog",
        "--tap-burst", "100",  # a buyer's taps and retries come back to back; the tap limit is tested elsewhere
        *extra)
    processes.append(proc)
    assert proc.stdout is not None  # read on, so a chatty log never blocks the server on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return Node(proc, http_port, ws_port, ADMIN)


async def buy(client: Client, user: str, sale_id: str) -> tuple[int, dict[str, Any] | None]:
    """Tap the sale TAPS times (some taps sent twice with the same request id), then check out
    (the checkout retried too). The units reserved, and the order (None: nothing was held)."""
    reserved: dict[str, int] = {}
    for n in range(TAPS):
        tap = {"type": "tap", "id": f"{user}-t{n}", "sale_id": sale_id}
        for _ in range(1 + (random.random() < 0.5)):
            answer = await client.request(tap)
            if answer["type"] == "ack":
                reserved[answer["re"]] = 1
            else:
                assert answer["code"] in ("sold_out", "limit_reached"), answer
    order = None
    for _ in range(2):
        answer = await client.request({"type": "checkout", "id": f"{user}-c"})
        if answer["type"] == "ack":
            assert order is None or answer["order"]["id"] == order["id"], (order, answer)
            order = answer["order"]
        else:
            assert answer["code"] == "cart_empty" and not reserved, answer
    return len(reserved), order


async def purchases(node: Node, session: aiohttp.ClientSession, expected: int) -> list[dict[str, Any]]:
    """The purchase stream as a service subscribed on ``node`` reads it, up to ``expected`` entries
    and on for a moment (anything more would be a duplicate)."""
    service, _ = await node.join(session, "service", "ledger")
    assert (await service.request({"type": "subscribe", "id": "s"}))["type"] == "ack"
    entries = []
    while True:
        try:
            message = await service.recv_type("purchase", timeout=5.0 if len(entries) < expected else 1.0)
        except TimeoutError:
            break
        entries.append(message["event"])
    await service.close()
    return entries


async def test_a_sale_started_through_one_node_sells_exactly_its_units_through_both(
        tmp_path: Path, redis_target: RedisTarget, processes: list[subprocess.Popen[str]]) -> None:
    a = serve(processes, tmp_path / "a", "node-a", redis_target)
    b = serve(processes, tmp_path / "b", "node-b", redis_target)
    async with aiohttp.ClientSession() as session:
        # Viewers on both nodes first: each node loads the room's (empty) shop.
        buyers = [(node, f"{name}{i}") for node, name in ((a, "ana"), (b, "bo")) for i in range(BUYERS)]
        clients = [await node.join(session, "viewer", user) for node, user in buyers]
        assert all(snapshot["products"] == [] and snapshot["sales"] == [] for _, snapshot in clients)

        host, _ = await a.join(session, "host", "hana")
        assert (await host.request({"type": "product.put", "id": 1, "product": {"id": "mug", **MUG}}))[
            "type"] == "ack"
        sale = {"id": "drop", "product_id": "mug", "price": 500, "quantity": UNITS, "duration": 600,
                "per_user_limit": LIMIT}
        assert (await host.request({"type": "sale.start", "id": 2, "sale": sale}))["type"] == "ack"

        # Each buyer taps as soon as the sale's start reaches it, on whichever node it is.
        async def one(client: Client, user: str) -> tuple[str, int, dict[str, Any] | None]:
            assert (await client.recv_type("sale.started"))["id"] == "drop"
            return (user, *await buy(client, user, "drop"))

        pairs = zip(clients, buyers, strict=True)
        results = await asyncio.gather(*(one(client, user) for (client, _), (_, user) in pairs))
        orders = [order for _, _, order in results if order is not None]
        assert sum(units for _, units, _ in results) == UNITS
        assert sum(order["quantity"] for order in orders) == UNITS
        assert max(order["quantity"] for order in orders) <= LIMIT
        assert {user[:2] for user, units, _ in results if units} == {"an", "bo"}  # sold through both nodes
        for node in (a, b):
            view = (await node.ok(session, "GET", "/api/rooms/demo/sales/drop"))["sale"]
            assert view["remaining"] == 0 and view["state"] == "sold_out", view
            listed = (await node.ok(session, "GET", "/api/rooms/demo/orders?limit=1000"))["orders"]
            assert sorted(o["id"] for o in listed) == sorted(o["id"] for o in orders)
            assert Counter(o["user"] for o in listed).most_common(1)[0][1] == 1  # one order per buyer
            assert sum(o["quantity"] for o in listed) == UNITS

        # Each order once in the purchase stream, read on node B.
        entries = await purchases(b, session, len(orders))
        placed = Counter(e["subject"] for e in entries if e["type"] == "livecart.order.placed")
        assert placed == Counter({order["id"]: 1 for order in orders}), placed
        assert sum(e["data"]["quantity"] for e in entries if e["type"] == "livecart.order.placed") == UNITS

        # The host ends the sale through node B: a tap on node A is then refused as not live.
        host_b, _ = await b.join(session, "host", "hana")
        assert (await host_b.request({"type": "sale.end", "id": 3, "sale_id": "drop"}))["type"] == "ack"
        ana = clients[0][0]
        await ana.recv_type("sale.ended")
        async with asyncio.timeout(5):
            while (await a.ok(session, "GET", "/api/rooms/demo/sales/drop"))["sale"]["state"] != "ended":
                await asyncio.sleep(0.05)
        refused = await ana.request({"type": "tap", "id": "late", "sale_id": "drop"})
        assert refused["code"] == "sale_not_live", refused
        for client, _ in clients:
            await client.close()
        await host.close()
        await host_b.close()


async def test_a_product_added_through_either_node_is_in_the_others_answers(
        tmp_path: Path, redis_target: RedisTarget, processes: list[subprocess.Popen[str]]) -> None:
    a = serve(processes, tmp_path / "a", "node-a", redis_target)
    b = serve(processes, tmp_path / "b", "node-b", redis_target)
    async with aiohttp.ClientSession() as session:
        watcher, snapshot = await a.join(session, "viewer", "wes")
        assert snapshot["products"] == []
        assert (await a.ok(session, "GET", "/api/rooms/demo/products"))["products"] == []

        await b.ok(session, "PUT", "/api/rooms/demo/products/cap", CAP)
        assert (await watcher.recv_type("product.put"))["id"] == "cap"  # the event, through the bus
        product = (await a.ok(session, "GET", "/api/rooms/demo/products/cap"))["product"]
        assert product["title"] == "Cap" and product["available"] == 5
        _, snapshot = await a.join(session, "viewer", "vi")
        assert [(p["id"], p["available"]) for p in snapshot["products"]] == [("cap", 5)]

        # A viewer on A taps it; an edit through B keeps the units A's viewer holds.
        assert (await watcher.request({"type": "tap", "id": "t", "product_id": "cap", "qty": 2}))["type"] == "ack"
        await b.ok(session, "PUT", "/api/rooms/demo/products/cap", {"price": 800})
        async with asyncio.timeout(5):
            while (await a.ok(session, "GET", "/api/rooms/demo/products/cap"))["product"]["price"] != 800:
                await asyncio.sleep(0.05)
        listed = (await a.ok(session, "GET", "/api/rooms/demo/products"))["products"]
        assert [(p["id"], p["price"], p["available"]) for p in listed] == [("cap", 800, 3)]

        # A tag pinned through A, on the product made through B, is in B's list; removed through B, gone from A's.
        await a.ok(session, "POST", "/api/rooms/demo/tags", {"id": "t1", "product_id": "cap", "x": 0.5, "y": 0.5})
        async with asyncio.timeout(5):
            while [t["id"] for t in (await b.ok(session, "GET", "/api/rooms/demo/tags"))["tags"]] != ["t1"]:
                await asyncio.sleep(0.05)
        status, body = await a.call(session, "PUT", "/api/rooms/demo/products/cap", {"currency": "USD"})
        assert status == 409, body  # A's viewer holds units priced in EUR
        await watcher.close()
