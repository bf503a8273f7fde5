"""A room's clock runs on one node at a time: the node holding the room's lease in Redis.

Two engines share one Redis (as two `livecart serve` processes would) and one controllable room
clock; both share the room's records and events on Redis, the room stocked through one node and
caught up by the other: the holder's announcements reach the viewers of both nodes once, and after a
takeover the new holder, whose clock had not announced them, makes its own, once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from commercekit import MUG, Clock, Rest, joined, no_message, running
from redis.asyncio import Redis

from engine.app import App
from engine.config import Config
from engine.leases.redis import RedisLeases
from tests.conftest import RedisTarget, token

SALE = {"id": "later", "product_id": "mug", "price": 700, "quantity": 5}


@pytest.fixture
def shared(config: Config, redis_target: RedisTarget) -> Config:
    return config.replace(redis_url=redis_target.url, redis_prefix=redis_target.prefix, lease_ttl=30.0)


async def stock_the_room(app: App, session: aiohttp.ClientSession, clock: Clock) -> None:
    """The mug and a sale starting in 300 s, put through the node's REST API by a host."""
    rest, host = Rest(app, session), token(app, role="host")
    assert (await rest.call("PUT", "/api/rooms/demo/products/mug", host, MUG))[0] == 200
    status, _ = await rest.call("POST", "/api/rooms/demo/sales", host,
                                {**SALE, "starts_at": clock.now + 300, "ends_at": clock.now + 600})
    assert status == 201


async def health(app: App, session: aiohttp.ClientSession) -> dict:
    async with session.get(f"http://127.0.0.1:{app.http_port}/healthz") as response:
        return await response.json()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_only_the_lease_holder_runs_the_clock_and_another_takes_over_when_it_stops(
        shared: Config, tmp_path: Path, session: aiohttp.ClientSession) -> None:
    clock = Clock()
    first = App(shared.replace(node_id="node-a"))
    first.commerce.clock = clock
    await first.start()
    first_running = True
    try:
        async with running(shared.replace(node_id="node-b", data_dir=str(tmp_path / "b")), clock) as second:
            a, b = (await health(first, session))["node"], (await health(second, session))["node"]
            assert a["clocks"] == ["demo"] and b["clocks"] == []
            assert [n["id"] for n in b["nodes"]] == ["node-a", "node-b"]
            assert (await Rest(second, session).call("GET", "/api/rooms/demo/products"))[0] == 200  # b loads the room
            await stock_the_room(first, session, clock)
            status, body = await Rest(second, session).call("GET", "/api/rooms/demo/sales/later")
            assert status == 200 and body["sale"]["state"] == "scheduled", body
            on_a, _ = await joined(first, sub="ana")
            on_b, _ = await joined(second, sub="bo")
            clock.advance(301)
            assert (await on_a.recv_type("sale.started"))["id"] == "later"
            assert (await on_b.recv_type("sale.started"))["id"] == "later"  # a's, through the bus
            await no_message(on_b, "sale.started", wait=0.5)  # b's clock does not run: a holds the room

            first_running = False
            await first.stop()  # a clean stop releases the lease: b takes it at its next round
            await second.cluster.clocks.round()
            assert (await health(second, session))["node"]["clocks"] == ["demo"]
            assert (await on_b.recv_type("sale.started"))["id"] == "later"
            await no_message(on_b, "sale.started", wait=0.5)  # once
            await on_b.close()
    finally:
        if first_running:
            await first.stop()


async def test_a_holder_whose_lease_was_taken_withholds_its_announcements(
        shared: Config, redis_target: RedisTarget, session: aiohttp.ClientSession) -> None:
    """A Redis failover that lost the lease key, and another node took the room: the old holder still
    believes it holds it (its own deadline is far), but the fencing token says otherwise."""
    clock = Clock()
    async with running(shared.replace(node_id="node-a", hold_seconds=60), clock) as app:
        await stock_the_room(app, session, clock)
        viewer, _ = await joined(app, sub="vera")
        tapped = await viewer.request({"type": "tap", "id": "t1", "product_id": "mug"})
        assert tapped["type"] == "ack"
        old = app.cluster.clocks.token("demo")
        client = Redis.from_url(redis_target.url)
        try:
            await client.delete(f"{redis_target.prefix}lease:{{demo}}")
            taken = await RedisLeases(client, redis_target.prefix).acquire("demo", "node-b", 30)
        finally:
            await client.aclose()
        assert taken is not None and old is not None and taken.token > old
        assert app.cluster.clocks.token("demo") == old  # by its own clock, a still holds the room

        clock.advance(301)  # the hold ran out and the sale starts
        # The expiry a applied in its stock is reported to its viewer (no other node applied it)...
        assert (await viewer.recv_type("cart.expired"))["reservation"] == tapped["reservation"]
        # ...but the sale's start is node-b's to announce now.
        await no_message(viewer, "sale.started", wait=0.5)
        await app.cluster.clocks.round()  # a's next renewal finds the lease gone
        assert app.cluster.clocks.token("demo") is None
        assert (await health(app, session))["node"]["clocks"] == []
        await viewer.close()
