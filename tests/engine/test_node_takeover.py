"""Two real `livecart serve` processes on one Redis: the room's clock runs on the lease holder only,
and when that process is killed outright (SIGKILL: no goodbye, no release), the other takes the
room's clock over once the lease's TTL has run out, and applies the timed work exactly once.

Both share the room's records and events on Redis: the sale is made through the first node and the
second one's shop catches up with it; it starts on the holder's clock only, and its start reaches
the viewers of both nodes once; after the takeover the new holder, whose clock had not announced
the start, announces it once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster_nodes import Node
from tests.conftest import Client, RedisTarget
from tests.engine.test_cli import fails_to_start, start_server

ADMIN = "cluster-admin-key"
MUG = {"title": "Mug", "price": 1200, "currency": "EUR", "stock": 10}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def node_view(node: Node, session: aiohttp.ClientSession) -> dict[str, Any]:
    """The node's own view of the cluster, from its /healthz."""
    return (await node.ok(session, "GET", "/healthz"))["node"]


async def until(node: Node, session: aiohttp.ClientSession, done: Any, timeout: float = 15.0) -> dict[str, Any]:
    """Poll the node's /healthz until ``done(node view)``."""
    async with asyncio.timeout(timeout):
        while True:
            view = await node_view(node, session)
            if done(view):
                return view
            await asyncio.sleep(0.1)


def serve(processes: list[subprocess.Popen[str]], data_dir: Path, node_id: str, redis: RedisTarget) -> Node:
    proc, http_port, ws_port, _ = start_server(
        data_dir, "--redis-url", redis.url, "--redis-prefix", redis.prefix, "--node-id", node_id,
        "--lease-ttl", "3", "--node-heartbeat", "0.3", "--node-ttl", "3", "--commerce-tick-ms", "50",
        "--admin-key", ADMIN, "--no-demo-catalog")
    processes.append(proc)
    return Node(proc, http_port, ws_port, ADMIN)


async def count(client: Client, type: str, wait: float) -> int:
    """How many messages of ``type`` arrive within ``wait`` seconds."""
    seen = 0
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await client.recv(left)
        except TimeoutError:
            break
        seen += message["type"] == type
    return seen


def test_a_killed_holders_room_clock_is_taken_over_and_its_work_done_once(
        tmp_path: Path, redis_target: RedisTarget, processes: list[subprocess.Popen[str]]) -> None:
    first = serve(processes, tmp_path / "a", "node-a", redis_target)

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            await until(first, session, lambda view: view["clocks"] == ["demo"])
            second = serve(processes, tmp_path / "b", "node-b", redis_target)
            view = await until(second, session, lambda view: len(view["nodes"]) == 2)
            assert view["clocks"] == [] and [n["id"] for n in view["nodes"]] == ["node-a", "node-b"]
            assert view["nodes"][0]["http_url"] == first.http and view["nodes"][0]["load"]["connections"] == 0

            starts_at = time.time() + 5  # after both viewers joined
            await second.ok(session, "GET", "/api/rooms/demo/products")  # the second node loads the room
            await first.ok(session, "PUT", "/api/rooms/demo/products/mug", MUG)
            await first.ok(session, "POST", "/api/rooms/demo/sales",
                             {"id": "later", "product_id": "mug", "price": 700, "quantity": 5,
                              "starts_at": starts_at, "ends_at": starts_at + 120})
            assert (await second.ok(session, "GET", "/api/rooms/demo/sales/later"))["sale"]["state"] == "scheduled"
            on_a, _ = await first.join(session, "viewer", "ana")
            on_b, _ = await second.join(session, "viewer", "bo")
            assert (await on_a.recv_type("sale.started", timeout=10))["id"] == "later"
            assert (await on_b.recv_type("sale.started", timeout=5))["id"] == "later"  # a's, through the bus
            assert await count(on_b, "sale.started", 1.0) == 0  # b's clock does not run: a holds the room
            view = await node_view(second, session)
            assert view["clocks"] == [] and {n["id"]: n for n in view["nodes"]}["node-a"]["load"]["viewers"] == 1

            first.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await until(second, session, lambda view: view["clocks"] == ["demo"])
            taken_over = time.monotonic() - killed
            assert (await on_b.recv_type("sale.started", timeout=5))["id"] == "later"
            assert await count(on_b, "sale.started", 1.5) == 0  # exactly once
            view = await until(second, session, lambda view: [n["id"] for n in view["nodes"]] == ["node-b"])
            assert view["clocks"] == ["demo"]
            await on_b.close()
            return taken_over

    taken_over = asyncio.run(scenario())
    first.proc.wait(10)
    print(f"room clock taken over {taken_over:.2f} s after the holder was killed (lease TTL 3 s)")


def test_bad_cluster_settings_are_one_line_and_exit_2(tmp_path: Path) -> None:
    assert "--node-heartbeat must be positive and shorter than --node-ttl" in fails_to_start(
        "--node-heartbeat", "5", "--node-ttl", "5", data_dir=tmp_path / "a")
    assert "--lease-ttl must be positive" in fails_to_start("--lease-ttl", "0", data_dir=tmp_path / "b")
    assert "--node-id" in fails_to_start("--node-id", "node a", data_dir=tmp_path / "c")
    assert "redis://" in fails_to_start("--redis-url", "http://127.0.0.1:6379", data_dir=tmp_path / "d")
    assert not any(tmp_path.iterdir()), "a refused setting must not create a data directory"
