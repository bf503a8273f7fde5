"""Two `livecart` nodes on one Redis key prefix: one secret and admin key, every room on every node,
orders written on one node read on the other, and a service subscribed on either node getting
every purchase event once, resuming from its last id on the other node."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from commercekit import MUG, Rest, joined, no_message, running

from engine.app import App
from engine.config import Config
from signaling.tokens import verify
from tests.conftest import Client, RedisTarget, connect, free_port, token


def node_config(config: Config, target: RedisTarget, tmp_path: Path, name: str) -> Config:
    """A node of its own (data directory, ports) on the shared Redis prefix; no secret given, so
    the secret and admin key are the ones kept on Redis."""
    return config.replace(data_dir=str(tmp_path / name), redis_url=target.url, redis_prefix=target.prefix,
                          secret="", admin_key="", redis_timeout=0.5, node_id=name)


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `check` until it returns something true (what another node publishes arrives soon, not at once)."""
    async with asyncio.timeout(timeout):
        while not (result := check()):
            await asyncio.sleep(0.01)
        return result


@pytest.fixture
async def nodes(config: Config, redis_target: RedisTarget, tmp_path: Path) -> AsyncIterator[tuple[App, App]]:
    async with running(node_config(config, redis_target, tmp_path, "a")) as a, \
            running(node_config(config, redis_target, tmp_path, "b")) as b:
        yield a, b


async def _service(app: App, after: str | None = None) -> Client:
    client = await connect(app, token(app, "*", "service", "ledger"))
    assert (await client.recv())["type"] == "hello"
    ack = await client.request({"type": "subscribe", "id": "s", **({"after": after} if after else {})})
    assert ack["type"] == "ack", ack
    return client


async def _buy(buyer: Client, n: int) -> str:
    assert (await buyer.request({"type": "tap", "id": f"t{n}", "product_id": "mug"}))["type"] == "ack"
    return (await buyer.request({"type": "checkout", "id": f"o{n}"}))["order"]["id"]


async def test_nodes_share_secret_rooms_orders_and_the_purchase_stream(nodes: tuple[App, App]) -> None:
    a, b = nodes
    assert a.secret == b.secret and a.admin_key == b.admin_key
    assert a.rooms.get("demo") is not None and b.rooms.get("demo") == a.rooms.get("demo")  # created once

    async with aiohttp.ClientSession() as session:
        rest_a, rest_b = Rest(a, session), Rest(b, session)
        status, created = await rest_a.call("POST", "/api/rooms", a.admin_key, {"id": "spring", "title": "Spring"})
        assert status == 201
        room = await eventually(lambda: b.rooms.get("spring"))
        assert room.stream_key == created["stream_key"]
        status, body = await rest_b.call("POST", "/api/rooms", b.admin_key, {"id": "spring"})
        assert status == 409 and body["error"]["code"] == "conflict"
        status, rotated = await rest_a.call("POST", "/api/rooms/spring/stream-key", a.admin_key)
        await eventually(lambda: b.rooms.get("spring").stream_key == rotated["stream_key"])
        status, _ = await rest_b.call("PATCH", "/api/rooms/spring", b.admin_key, {"title": "Spring drop"})
        await eventually(lambda: a.rooms.get("spring").title == "Spring drop")

        # A host on A stocks the demo room; a buyer on A checks out; a service on B reads the orders.
        host, _ = await joined(a, "host", "hana")
        await host.request({"type": "product.put", "id": 1, "product": {**MUG, "stock": 100}})
        buyer, _ = await joined(a, sub="alice")
        first = await _buy(buyer, 1)
        service = await _service(b)  # a token minted with B's secret, which is A's
        placed = await service.recv_type("purchase")
        assert placed["event"]["subject"] == first
        status, order = await rest_b.call("GET", f"/api/rooms/demo/orders/{first}", b.admin_key)
        assert status == 200 and order["order"]["user"] == "alice"

        second = await _buy(buyer, 2)  # appended on A: B's subscription is woken by the stream
        live = await service.recv_type("purchase")
        assert live["event"]["subject"] == second and int(live["id"]) == int(placed["id"]) + 1
        await service.close()

        third = await _buy(buyer, 3)
        resumed = await _service(a, after=live["id"])  # resume on the other node
        entry = await resumed.recv_type("purchase")
        assert entry["event"]["subject"] == third
        await no_message(resumed, "purchase")
        status, orders = await rest_a.call("GET", "/api/rooms/demo/orders", a.admin_key)
        assert [o["id"] for o in orders["orders"]] == [third, second, first]


async def test_a_restarted_node_finds_rooms_orders_and_log(config: Config, redis_target: RedisTarget,
                                                           tmp_path: Path) -> None:
    async with running(node_config(config, redis_target, tmp_path, "a")) as a:
        host, _ = await joined(a, "host", "hana")
        await host.request({"type": "product.put", "id": 1, "product": {**MUG, "stock": 3}})
        buyer, _ = await joined(a, sub="alice")
        bought = await _buy(buyer, 1)
        secret, last = a.secret, await a.commerce.log.last_id()
    # A fresh node with an empty data directory of its own: everything comes from Redis.
    async with running(node_config(config, redis_target, tmp_path, "c")) as c:
        assert c.secret == secret and c.rooms.get("demo") is not None
        assert await c.commerce.log.last_id() == last
        view = await (await c.commerce.shop("demo")).view()
        assert [(p["id"], p["available"]) for p in view["products"]] == [("mug", 2)]  # sold units rebuilt
        assert view["totals"]["orders"] == 1
        buyer, _ = await joined(c, sub="alice")
        again = await buyer.request({"type": "checkout", "id": "o1"})  # a retry after the restart: same order
        assert again["order"]["id"] == bought


def test_token_command_signs_with_the_secret_kept_on_redis(config: Config, redis_target: RedisTarget,
                                                           tmp_path: Path) -> None:
    async def start_and_stop() -> str:
        async with running(node_config(config, redis_target, tmp_path, "a")) as a:
            return a.secret

    secret = asyncio.run(start_and_stop())
    command = [sys.executable, "-m", "engine.cli", "token", "--room", "demo", "--role", "viewer",
               "--redis-url", redis_target.url]
    made = subprocess.run([*command, "--redis-prefix", redis_target.prefix], capture_output=True, text=True,
                          cwd=tmp_path, check=True)
    assert verify(secret, made.stdout.strip()).room == "demo"
    other = subprocess.run([*command, "--redis-prefix", redis_target.prefix + "other:"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert other.returncode == 2 and not other.stdout and "no secret in" in other.stderr


def test_serve_without_its_redis_says_so_in_one_line(tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--redis-url", nowhere, "--data-dir",
                           str(tmp_path / "data"), "--http-port", "0", "--ws-port", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot reach Redis at {nowhere} (--redis-url)" in done.stderr
