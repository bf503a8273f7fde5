"""Stock and carts on Redis (--redis-url), through the real websocket: a `livecart serve` process
end to end, and a Redis that dies mid-sale and comes back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from commercekit import MUG, Clock, Rest, joined, running

from engine.app import App
from engine.config import Config
from tests.conftest import Client, RedisTarget, free_port
from tests.engine.test_cli import announcement
from tests.redis_server import RedisServer

SALE = {"id": "drop", "product_id": "mug", "price": 500, "quantity": 4, "duration": 600, "per_user_limit": 2}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()  # append-only, fsync always: a restart finds what was acknowledged
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def app(config: Config, clock: Clock, redis_server: RedisServer) -> AsyncIterator[App]:
    async with running(config.replace(redis_url=redis_server.url, redis_timeout=0.5), clock) as engine:
        yield engine


async def _sale(app: App) -> None:
    host, _ = await joined(app, "host", "hana")
    assert (await host.request({"type": "product.put", "id": 1, "product": MUG}))["type"] == "ack"
    assert (await host.request({"type": "sale.start", "id": 2, "sale": SALE}))["type"] == "ack"
    await host.close()


async def _remaining(rest: Rest) -> int:
    status, body = await _rest_retried(rest, "/api/rooms/demo/sales/drop")
    assert status == 200, body
    return body["sale"]["remaining"]


# A connection the server pooled before Redis restarted fails its first call after it: the answer is
# `unavailable` ("retry"), and a client retries as told (a websocket request with the same id).
RETRIES = 5


async def _retried(client: Client, message: dict[str, Any]) -> dict[str, Any]:
    for _ in range(RETRIES):
        reply = await client.request(message)
        if reply.get("code") != "unavailable":
            return reply
    return reply


async def _rest_retried(rest: Rest, path: str, key: str | None = None) -> tuple[int, Any]:
    for _ in range(RETRIES):
        status, body = await rest.call("GET", path, key)
        if status != 503:
            return status, body
    return status, body


async def test_redis_dying_mid_sale_answers_unavailable_then_counts_are_exact(
    app: App, rest: Rest, redis_server: RedisServer
) -> None:
    await _sale(app)
    alice, snapshot = await joined(app, sub="alice")
    assert [s["remaining"] for s in snapshot["sales"]] == [4]
    bob, _ = await joined(app, sub="bob")
    assert (await alice.request({"type": "tap", "id": "a1", "sale_id": "drop"}))["type"] == "ack"

    redis_server.stop()
    # Every action answers at once with a clear error, none hangs (request() gives up after 5 s).
    refused = await bob.request({"type": "tap", "id": "b1", "sale_id": "drop", "qty": 2})
    assert refused["type"] == "error" and refused["code"] == "unavailable", refused
    again = await alice.request({"type": "tap", "id": "a2", "sale_id": "drop"})
    assert again["code"] == "unavailable", again
    assert (await alice.request({"type": "checkout", "id": "c1"}))["code"] == "unavailable"
    status, body = await rest.call("GET", "/api/rooms/demo/sales/drop")
    assert status == 503 and body["error"]["code"] == "unavailable", body
    # A viewer joining meanwhile still gets its snapshot (the room, without the shop part).
    carol, snapshot = await joined(app, sub="carol")
    assert snapshot["type"] == "snapshot" and "sales" not in snapshot

    redis_server.start()
    # The retries (same request ids) now go through: each reserves once.
    assert (await _retried(bob, {"type": "tap", "id": "b1", "sale_id": "drop", "qty": 2}))["type"] == "ack"
    assert (await _retried(alice, {"type": "tap", "id": "a2", "sale_id": "drop"}))["type"] == "ack"
    assert (await _retried(alice, {"type": "tap", "id": "a2", "sale_id": "drop"}))["type"] == "ack"
    assert (await _retried(carol, {"type": "tap", "id": "c1", "sale_id": "drop"}))["code"] == "sold_out"
    assert await _remaining(rest) == 0
    checkout = await _retried(alice, {"type": "checkout", "id": "c1"})
    assert checkout["type"] == "ack", checkout
    order = checkout["order"]
    assert order["quantity"] == 2 and order["total"] == 2 * SALE["price"]
    cart = (await _retried(bob, {"type": "cart", "id": "cart"}))["cart"]
    assert [line["quantity"] for line in cart["lines"]] == [2]
    assert (await _retried(bob, {"type": "uncart", "id": "u", "reservation": cart["lines"][0]["reservation"]}))[
        "type"] == "ack"
    assert await _remaining(rest) == 2
    assert (await _retried(alice, {"type": "tap", "id": "a3", "sale_id": "drop"}))["code"] == "limit_reached"
    status, orders = await _rest_retried(rest, "/api/rooms/demo/orders", app.admin_key)
    assert status == 200, orders
    assert [o["quantity"] for o in orders["orders"]] == [2]
    for client in (alice, bob, carol):
        await client.close()


async def test_held_units_expire_on_redis_and_return_once(app: App, rest: Rest, clock: Clock) -> None:
    await _sale(app)
    alice, _ = await joined(app, sub="alice")
    assert (await alice.request({"type": "tap", "id": "a1", "sale_id": "drop", "qty": 2}))["type"] == "ack"
    assert await _remaining(rest) == 2
    clock.advance(app.config.hold_seconds + 1)
    expired = await alice.recv_type("cart.expired")
    assert expired["reservation"]
    assert await _remaining(rest) == 4
    assert (await alice.request({"type": "cart", "id": "c"}))["cart"]["lines"] == []
    await alice.close()


# -- one real `livecart serve --redis-url` process ------------------------------------------------


def _serve(data_dir: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], int, dict[str, str]]:
    """Start `livecart serve` and read the tokens it announces."""
    http_port, ws_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--data-dir", str(data_dir), "--http-port", str(http_port),
         "--ws-port", str(ws_port), "--no-demo-catalog", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, ws_port, announcement(proc)


async def test_livecart_serve_with_redis_url_taps_and_checks_out(tmp_path: Path, redis_target: RedisTarget) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")}
    env["LIVECART_REDIS_URL"] = redis_target.url  # the environment names Redis, the flag the prefix
    proc, ws_port, info = _serve(tmp_path, env, "--redis-prefix", redis_target.prefix)
    try:
        async def connect(tok: str) -> Client:
            client = Client(await websockets.connect(f"ws://127.0.0.1:{ws_port}/ws?token={tok}"))
            assert (await client.recv_type("snapshot"))["room"] == "demo"
            return client

        host = await connect(info["host token"])
        assert (await host.request({"type": "product.put", "id": 1, "product": MUG}))["type"] == "ack"
        viewer = await connect(info["viewer token"])
        tapped = await viewer.request({"type": "tap", "id": "t1", "product_id": "mug", "qty": 3})
        assert tapped["type"] == "ack" and tapped["cart"]["quantity"] == 3, tapped
        order = (await viewer.request({"type": "checkout", "id": "c1"}))["order"]
        assert order["quantity"] == 3 and order["total"] == 3 * MUG["price"]
        # The units are counted in Redis, under the prefix, in the room's hash-tagged keys.
        client = aioredis.from_url(redis_target.url)
        try:
            pools = [key async for key in client.scan_iter(match=f"{redis_target.prefix}{{demo}}:pool:*")]
            assert len(pools) == 1, pools
            pool = await client.hgetall(pools[0])
            assert {k.decode(): int(v) for k, v in pool.items() if k != b"version"} == {
                "quantity": 10, "reserved": 0, "sold": 3}
        finally:
            await client.aclose()
        # A second viewer's snapshot, read from Redis, shows what is left.
        other = Client(await websockets.connect(f"ws://127.0.0.1:{ws_port}/ws?token={info['viewer token']}"))
        snapshot = await other.recv_type("snapshot")
        assert [p["available"] for p in snapshot["products"]] == [7]
        for c in (host, viewer, other):
            await c.close()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_unreachable_redis_at_start_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")}
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "engine.cli", "serve", "--data-dir", str(tmp_path),
                         "--http-port", "0", "--ws-port", "0", "--redis-url", url, "--redis-timeout", "0.5"],
        capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 2 and "Redis" in done.stderr and "Traceback" not in done.stderr, done.stderr
