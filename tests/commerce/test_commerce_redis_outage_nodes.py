"""The whole deployment through a Redis outage mid-sale: a redis-server of the test's own
(``appendonly yes``, ``appendfsync always``: every acknowledged write survives it being killed), two
real `livecart serve --redis-url` processes, viewers on both tapping a flash sale and checking out,
and Redis killed (then restarted on its AOF) or frozen (SIGSTOP, so calls time out, then SIGCONT:
it then runs what it was sent meanwhile) while taps and checkouts are in flight.

During the outage every websocket stays open, every action is answered (the retryable
`unavailable`, or its result) within ``--redis-timeout`` plus slack, and both nodes say
``degraded`` in /healthz and 0 in ``livecart_bus_connected``. Once Redis is back both nodes are
healthy again by themselves, every buyer's retries (same request ids) complete, and stock, carts,
orders and the purchase log agree exactly: every unit sold once, none left reserved or lost, no
buyer over the limit, each order once in the purchase stream (read with XRANGE, by a service
subscribed on one node through the outage, and by one subscribing afterwards on the other), and
both nodes list the same orders."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.protocol import State

from tests.cluster_nodes import Node
from tests.commerce.test_commerce_cross_node import purchases
from tests.conftest import Client
from tests.engine.test_cli import start_server
from tests.redis_server import RedisServer

ADMIN = "outage-admin-key"
REDIS_TIMEOUT = 0.5  # --redis-timeout, seconds
ANSWER_WITHIN = REDIS_TIMEOUT + 5.0  # no hang: an answer within the Redis timeout plus slack for a loaded machine
UNITS, LIMIT, TAPS = 60, 2, 3  # each buyer taps TAPS times for at most LIMIT units
STEADY = 12  # buyers per node tapping at random moments, some of them in flight when Redis goes
AT_OUTAGE = 4  # buyers per node that act right after Redis went: half check out, half tap
PACE = 0.6  # at most this many seconds between a steady buyer's actions
OUTAGE = 3.0  # seconds Redis stays away
RETRY_PAUSE = 0.2  # seconds a client waits before retrying an `unavailable` action
MUG = {"title": "Mug", "price": 1200, "currency": "EUR", "stock": 1000}


@dataclass
class Tally:
    """What the buyers met: `unavailable` answers per action type, and the orders placed, by user."""

    unavailable: Counter[str] = field(default_factory=Counter)
    reserved: dict[str, int] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)


def serve(processes: list[subprocess.Popen[str]], data_dir: Path, node_id: str, redis_url: str) -> Node:
    proc, http_port, ws_port, _ = start_server(
        data_dir, "--redis-url", redis_url, "--redis-timeout", str(REDIS_TIMEOUT), "--node-id", node_id,
        "--admin-key", ADMIN, "--no-demo-catalog",
        "--tap-burst", "100")  # a buyer's retries come back to back; the tap limit is tested elsewhere
    processes.append(proc)
    assert proc.stdout is not None  # read on, so the warnings of an outage never block the server on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return Node(proc, http_port, ws_port, ADMIN)


async def answered(client: Client, message: dict[str, Any], tally: Tally) -> dict[str, Any]:
    """Send an action and retry it with the same request id while it is answered `unavailable`;
    every answer must come within ANSWER_WITHIN (an action is never left hanging). The final answer."""
    while True:
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                answer = await client.request(message, ANSWER_WITHIN)
        except TimeoutError:
            raise AssertionError(f"{message} not answered within {ANSWER_WITHIN} s") from None
        if answer["type"] == "error" and answer["code"] == "unavailable":
            tally.unavailable[message["type"]] += 1
            await asyncio.sleep(RETRY_PAUSE)
            continue
        return answer


async def tap(client: Client, user: str, n: int, tally: Tally) -> None:
    answer = await answered(client, {"type": "tap", "id": f"{user}-t{n}", "sale_id": "drop"}, tally)
    if answer["type"] == "ack":
        tally.reserved[user] = tally.reserved.get(user, 0) + 1
    else:
        assert answer["code"] in ("sold_out", "limit_reached"), answer


async def checkout(client: Client, user: str, tally: Tally) -> None:
    answer = await answered(client, {"type": "checkout", "id": f"{user}-c"}, tally)
    if answer["type"] == "ack":
        tally.orders[user] = answer["order"]
    else:
        assert answer["code"] == "cart_empty" and not tally.reserved.get(user), (user, answer)


async def steady_buyer(client: Client, user: str, tally: Tally) -> None:
    """Taps TAPS times and checks out, at random moments: some of these are in flight when Redis goes."""
    for n in range(TAPS):
        await asyncio.sleep(random.uniform(0, PACE))
        await tap(client, user, n, tally)
    await asyncio.sleep(random.uniform(0, PACE))
    await checkout(client, user, tally)


async def outage_buyer(client: Client, user: str, tally: Tally, gone: asyncio.Event, kind: int) -> None:
    """Acts as soon as Redis is gone, so the outage surely meets a tap and a checkout: kind 0 tapped
    once before and checks out then; kind 1 taps then (and checks out after)."""
    if kind == 0:
        await tap(client, user, 0, tally)
        await gone.wait()
    else:
        await gone.wait()
        for n in range(TAPS):
            await tap(client, user, n, tally)
    await checkout(client, user, tally)


async def health(node: Node, session: aiohttp.ClientSession) -> tuple[str, float]:
    """The node's /healthz status and its ``livecart_bus_connected`` gauge."""
    async with session.get(node.http + "/healthz") as response:
        status = (await response.json())["status"]
    async with session.get(node.http + "/metrics") as response:
        found = re.search(r"^livecart_bus_connected (\S+)$", await response.text(), re.MULTILINE)
    assert found is not None, "livecart_bus_connected missing from /metrics"
    return status, float(found.group(1))


async def until_health(nodes: list[Node], session: aiohttp.ClientSession, expected: tuple[str, float],
                       within: float) -> None:
    """Wait until every node's health is ``expected``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        seen = [await health(node, session) for node in nodes]
        if all(view == expected for view in seen):
            return
        assert time.monotonic() < deadline, f"health {seen}, expected {expected} on every node"
        await asyncio.sleep(0.05)


async def follow(service: Client, into: list[dict[str, Any]]) -> None:
    """Collect the purchase events a subscribed service receives, until its connection closes."""
    while True:
        message = await service.recv_type("purchase", timeout=3600)
        into.append(message["event"])


def stop_kill(server: RedisServer) -> tuple[Callable[[], None], Callable[[], None]]:
    return server.stop, server.start


def stop_freeze(server: RedisServer) -> tuple[Callable[[], None], Callable[[], None]]:
    return server.pause, server.resume


OUTAGES: dict[str, Callable[[RedisServer], tuple[Callable[[], None], Callable[[], None]]]] = {
    "killed-then-restarted": stop_kill, "frozen-then-resumed": stop_freeze}


@pytest.mark.parametrize("outage", list(OUTAGES))
async def test_a_redis_outage_mid_sale_leaves_two_nodes_exactly_consistent(
        tmp_path: Path, processes: list[subprocess.Popen[str]], outage: str) -> None:
    server = RedisServer()  # appendonly yes, appendfsync always
    server.start()
    go_away, come_back = OUTAGES[outage](server)
    try:
        await sale_through_an_outage(tmp_path, processes, server, go_away, come_back)
    finally:
        server.close()


async def sale_through_an_outage(tmp_path: Path, processes: list[subprocess.Popen[str]], server: RedisServer,
                                 go_away: Callable[[], None], come_back: Callable[[], None]) -> None:
    a = serve(processes, tmp_path / "a", "node-a", server.url)
    b = serve(processes, tmp_path / "b", "node-b", server.url)
    nodes = [a, b]
    tally = Tally()
    loop = asyncio.get_running_loop()

    async def off_loop(call: Callable[[], None]) -> None:
        await loop.run_in_executor(None, call)

    async with aiohttp.ClientSession() as session:
        await until_health(nodes, session, ("ok", 1.0), 10)
        steady = [(node, f"{node_name}-s{i}") for node, node_name in ((a, "a"), (b, "b")) for i in range(STEADY)]
        at_outage = [(node, f"{node_name}-o{i}") for node, node_name in ((a, "a"), (b, "b"))
                     for i in range(AT_OUTAGE)]
        clients = {user: (await node.join(session, "viewer", user))[0] for node, user in steady + at_outage}

        # A service on B follows the purchase stream from before the sale, through the outage.
        ledger, _ = await b.join(session, "service", "ledger")
        assert (await ledger.request({"type": "subscribe", "id": "s"}))["type"] == "ack"
        followed: list[dict[str, Any]] = []
        following = loop.create_task(follow(ledger, followed))

        host, _ = await a.join(session, "host", "hana")
        assert (await host.request({"type": "product.put", "id": 1, "product": {"id": "mug", **MUG}}))[
            "type"] == "ack"
        sale = {"id": "drop", "product_id": "mug", "price": 500, "quantity": UNITS, "duration": 600,
                "per_user_limit": LIMIT}
        assert (await host.request({"type": "sale.start", "id": 2, "sale": sale}))["type"] == "ack"
        for client in clients.values():
            assert (await client.recv_type("sale.started"))["id"] == "drop"

        gone = asyncio.Event()
        buyers: list[Awaitable[None]] = [steady_buyer(clients[user], user, tally) for _, user in steady]
        buyers += [outage_buyer(clients[user], user, tally, gone, n % 2) for n, (_, user) in enumerate(at_outage)]
        buying = asyncio.gather(*buyers)

        # Redis goes once the sale is under way: some orders placed, taps and checkouts in flight.
        async with asyncio.timeout(30):
            while not tally.orders:
                await asyncio.sleep(0.01)
        placed_before = dict(tally.orders)
        await off_loop(go_away)
        gone.set()
        await until_health(nodes, session, ("degraded", 0.0), ANSWER_WITHIN)
        await asyncio.sleep(OUTAGE)
        assert not buying.done()  # buyers still waiting for Redis
        await off_loop(come_back)
        await until_health(nodes, session, ("ok", 1.0), 30)

        async with asyncio.timeout(60):
            await buying  # every retry completed
        assert tally.unavailable["tap"] > 0 and tally.unavailable["checkout"] > 0, tally.unavailable
        for user, order in placed_before.items():  # acknowledged before the outage: survived it
            assert tally.orders[user]["id"] == order["id"]
        for user, client in clients.items():
            assert client.ws.state is State.OPEN, user

        # Stock: every unit sold once (demand exceeds supply and every tap was answered), none held.
        orders = list(tally.orders.values())
        assert sum(tally.reserved.values()) == UNITS, tally.reserved
        assert {user: order["quantity"] for user, order in tally.orders.items()} == tally.reserved
        assert max(order["quantity"] for order in orders) <= LIMIT
        client_redis = aioredis.from_url(server.url)
        try:
            pools = [key async for key in client_redis.scan_iter(match="livecart:{demo}:pool:*")]
            counters = [{k.decode(): int(v) for k, v in (await client_redis.hgetall(key)).items()
                         if k in (b"quantity", b"reserved", b"sold")} for key in pools]
            assert {"quantity": UNITS, "reserved": 0, "sold": UNITS} in counters, counters
            assert await client_redis.hlen("livecart:{demo}:res") == 0
            assert [key async for key in client_redis.scan_iter(match="livecart:{demo}:cart:*")] == []
            streamed = [{k.decode(): v for k, v in fields.items()}
                        for _, fields in await client_redis.xrange("livecart:{purchases}:stream")]
        finally:
            await client_redis.aclose()
        for node in nodes:
            view = (await node.ok(session, "GET", "/api/rooms/demo/sales/drop"))["sale"]
            assert (view["remaining"], view["state"]) == (0, "sold_out"), view
            listed = (await node.ok(session, "GET", "/api/rooms/demo/orders?limit=1000"))["orders"]
            assert sorted((o["id"], o["user"], o["quantity"]) for o in listed) == sorted(
                (o["id"], o["user"], o["quantity"]) for o in orders)

        # The purchase log: each order once, nothing else, however it is read.
        expected = Counter({order["id"]: 1 for order in orders})
        assert len({(e["source"], e["id"]) for e in streamed}) == len(streamed)
        assert Counter(orjson.loads(e["event"])["subject"] for e in streamed
                       if e["type"] == b"livecart.order.placed") == expected
        async with asyncio.timeout(30):
            while len(followed) < len(orders):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # anything more would be a duplicate
        following.cancel()
        assert Counter(e["subject"] for e in followed if e["type"] == "livecart.order.placed") == expected
        afterwards = await purchases(a, session, len(orders))
        assert Counter(e["subject"] for e in afterwards if e["type"] == "livecart.order.placed") == expected
        assert ledger.ws.state is State.OPEN

        for client in [*clients.values(), host, ledger]:
            await client.close()
