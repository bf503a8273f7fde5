"""Two real `livecart serve --redis-url` processes behave as one server for what a room shows and
refuses: a sale ended through one node is refused on the other at once, its sold-out and resumed
announcements are made once each whichever node's call emptied or refilled it, and both nodes
show and publish the room's sales figures (every node's orders), not their own."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from tests.commerce.test_commerce_cross_node import serve
from tests.conftest import Client, RedisTarget

MUG = {"title": "Mug", "price": 1200, "currency": "EUR", "stock": 100}


async def start(host: Client, sale: dict[str, Any]) -> None:
    assert (await host.request({"type": "product.put", "id": "p", "product": {"id": "mug", **MUG}}))["type"] == "ack"
    assert (await host.request({"type": "sale.start", "id": "s", "sale": sale}))["type"] == "ack"


async def collect(client: Client, seconds: float) -> list[dict[str, Any]]:
    """Every message `client` receives within `seconds`."""
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                seen.append(await client.recv(seconds))
    return seen


async def test_a_sale_ended_through_one_node_is_refused_on_the_other_at_once(
        tmp_path: Path, redis_target: RedisTarget, processes: list[subprocess.Popen[str]]) -> None:
    # Clocks that tick seldom: no node reads the records again while the test runs, as if the end
    # had been made a moment ago.
    slow = ("--commerce-tick-ms", "30000")
    a = serve(processes, tmp_path / "a", "node-a", redis_target, *slow)
    b = serve(processes, tmp_path / "b", "node-b", redis_target, *slow)
    async with aiohttp.ClientSession() as session:
        buyer, _ = await a.join(session, "viewer", "ana")
        host_b, _ = await b.join(session, "host", "hana")
        await start(host_b, {"id": "drop", "product_id": "mug", "price": 500, "quantity": 10, "duration": 600,
                             "per_user_limit": 5})
        assert (await buyer.request({"type": "tap", "id": "t1", "sale_id": "drop"}))["type"] == "ack"
        assert (await host_b.request({"type": "sale.end", "id": "e", "sale_id": "drop"}))["type"] == "ack"
        refused = await buyer.request({"type": "tap", "id": "t2", "sale_id": "drop"})
        assert (refused["type"], refused["code"]) == ("error", "sale_not_live")
        assert refused["message"] == "sale drop is ended"
        again = await buyer.request({"type": "tap", "id": "t2", "sale_id": "drop"})  # a retry: the same answer
        assert (again["code"], again["message"]) == ("sale_not_live", "sale drop is ended")
        # What the buyer held before the end stays theirs to check out, through either node.
        order = await buyer.request({"type": "checkout", "id": "c"})
        assert order["type"] == "ack" and order["order"]["quantity"] == 1, order
        for client in (buyer, host_b):
            await client.close()


async def test_sold_out_and_resumed_are_announced_once_each_whichever_node_turns_the_sale(
        tmp_path: Path, redis_target: RedisTarget, processes: list[subprocess.Popen[str]]) -> None:
    a = serve(processes, tmp_path / "a", "node-a", redis_target)
    b = serve(processes, tmp_path / "b", "node-b", redis_target)
    async with aiohttp.ClientSession() as session:
        watcher_a, _ = await a.join(session, "viewer", "wes")
        watcher_b, _ = await b.join(session, "viewer", "wil")
        host, _ = await a.join(session, "host", "hana")
        await start(host, {"id": "drop", "product_id": "mug", "price": 500, "quantity": 2, "duration": 600,
                           "per_user_limit": 1})
        ana, _ = await a.join(session, "viewer", "ana")
        bo, _ = await b.join(session, "viewer", "bo")
        bea, _ = await b.join(session, "viewer", "bea")
        held = await ana.request({"type": "tap", "id": "t", "sale_id": "drop"})
        assert held["type"] == "ack", held
        assert (await bo.request({"type": "tap", "id": "t", "sale_id": "drop"}))["type"] == "ack"  # B empties it
        assert (await ana.request({"type": "uncart", "id": "u", "reservation": held["reservation"]}))[
            "type"] == "ack"  # A refills it
        assert (await bea.request({"type": "tap", "id": "t", "sale_id": "drop"}))["type"] == "ack"  # B empties it again
        for watcher in (watcher_a, watcher_b):
            announced = [m["type"] for m in await collect(watcher, 1.5)
                         if m["type"] in ("sale.sold_out", "sale.resumed")]
            assert announced == ["sale.sold_out", "sale.resumed", "sale.sold_out"], announced
        for client in (watcher_a, watcher_b, host, ana, bo, bea):
            await client.close()


async def test_both_nodes_show_and_publish_the_rooms_sales_figures(
        tmp_path: Path, redis_target: RedisTarget, processes: list[subprocess.Popen[str]]) -> None:
    a = serve(processes, tmp_path / "a", "node-a", redis_target)
    b = serve(processes, tmp_path / "b", "node-b", redis_target)
    async with aiohttp.ClientSession() as session:
        watchers = [(await node.join(session, "viewer", f"w{i}"))[0] for i, node in enumerate((a, b))]
        host, _ = await a.join(session, "host", "hana")
        assert (await host.request({"type": "product.put", "id": "p", "product": {"id": "mug", **MUG}}))[
            "type"] == "ack"
        # Buyers on both nodes, each loaded before any order: 3 orders through A, 2 through B.
        buyers = [(await node.join(session, "viewer", f"{name}{i}"))[0]
                  for node, name, count in ((a, "ana", 3), (b, "bo", 2)) for i in range(count)]
        for n, buyer in enumerate(buyers):
            tap = {"type": "tap", "id": "t", "product_id": "mug", "qty": 1 + n % 2}
            assert (await buyer.request(tap))["type"] == "ack"
            assert (await buyer.request({"type": "checkout", "id": "c"}))["type"] == "ack"
        want = {"orders": 5, "units": 7, "revenue": {"EUR": 7 * 1200}}

        # Published (by one node, through the bus) to viewers on both nodes.
        for watcher in watchers:
            async with asyncio.timeout(5):
                while True:
                    message = await watcher.recv_type("sales.totals")
                    if {k: message[k] for k in want} == want:
                        break
        # And in a fresh snapshot on either node.
        for node in (a, b):
            async with asyncio.timeout(5):
                while True:
                    client, snapshot = await node.join(session, "viewer", "late")
                    await client.close()
                    if snapshot["totals"] == want and snapshot["recent"]["units"] == 7:
                        break
                    await asyncio.sleep(0.1)
        for client in (*watchers, host, *buyers):
            await client.close()
