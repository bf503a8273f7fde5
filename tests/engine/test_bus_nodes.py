"""Several engines on one Redis, as several ``livecart serve`` nodes: one room served by all of them
at once, its events in one order with one seq on every node, resumable on any node, and the nodes
riding out Redis going away (websockets stay open, /healthz says so, clients get a snapshot when
the events they missed are gone).

Each engine keeps its own data directory; the demo room exists on each of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from engine.app import App
from engine.config import Config
from tests.conftest import Client, RedisTarget, connect, token
from tests.redis_server import RedisServer


@asynccontextmanager
async def cluster(config: Config, tmp_path: Path, url: str, prefix: str, count: int) -> AsyncIterator[list[App]]:
    apps = [App(config.replace(data_dir=str(tmp_path / f"node{n}"), redis_url=url, redis_prefix=prefix,
                               node_id=f"node-{n}", lease_ttl=1.0, node_heartbeat=0.2, node_ttl=1.0))
            for n in range(count)]
    started: list[App] = []
    try:
        for app in apps:
            await app.start()
            started.append(app)
        yield apps
    finally:
        for app in reversed(started):
            await app.stop()


async def joined(app: App, sub: str, role: str = "viewer", query: str = "") -> tuple[Client, dict[str, Any]]:
    client = await connect(app, token(app, sub=sub, role=role), query)
    return client, await client.recv()


async def chats(client: Client, count: int) -> list[dict[str, Any]]:
    return [await client.recv_type("chat") for _ in range(count)]


async def health(app: App) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{app.http_port}/healthz") as r:
        assert r.status == 200
        return await r.json()


async def metrics(app: App) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{app.http_port}/metrics") as r:
        return await r.text()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_one_room_on_three_nodes_one_order(config: Config, tmp_path: Path, redis_target: RedisTarget) -> None:
    async with cluster(config, tmp_path, redis_target.url, redis_target.prefix, 3) as (a, b, c):
        on_a, snap_a = await joined(a, "ann")
        on_b, snap_b = await joined(b, "bob")
        assert snap_a["type"] == snap_b["type"] == "snapshot"
        senders = [(await joined(c, "host", role="host"))[0], (await joined(a, "cat"))[0], (await joined(b, "dan"))[0]]
        acks = []
        for n in range(10):  # from every node in turn: a host on C, viewers on A and B
            sender = senders[n % 3]
            acks.append(await sender.request({"type": "chat", "id": n, "text": f"hello {n}"}))
        assert all(ack["type"] == "ack" for ack in acks)
        seen_a, seen_b = await chats(on_a, 10), await chats(on_b, 10)
        assert seen_a == seen_b  # same events, same seqs, same order, same bytes' worth
        assert [m["text"] for m in seen_a] == [f"hello {n}" for n in range(10)]
        assert [m["seq"] for m in seen_a] == [ack["seq"] for ack in acks]
        assert a.bus.seq("demo") == b.bus.seq("demo")
        for client in (on_a, on_b, *senders):
            await client.close()


async def test_a_viewer_dropped_from_one_node_resumes_on_another(config: Config, tmp_path: Path,
                                                                 redis_target: RedisTarget) -> None:
    async with cluster(config, tmp_path, redis_target.url, redis_target.prefix, 2) as (a, b):
        host, _ = await joined(a, "host", role="host")
        viewer, _ = await joined(a, "ann")
        await host.request({"type": "chat", "id": 1, "text": "before"})
        last = (await viewer.recv_type("chat"))["seq"]
        await viewer.close()
        for n in range(3):
            await host.request({"type": "chat", "id": 10 + n, "text": f"missed {n}"})
        latest = a.bus.seq("demo")
        back, first = await joined(b, "ann", query=f"&since={last}")
        replayed = [first]
        while replayed[-1]["seq"] < latest:
            replayed.append(await back.recv())
        # Exactly what followed ``since``: consecutive seqs, nothing twice, no snapshot.
        assert [m["seq"] for m in replayed] == list(range(last + 1, latest + 1))
        assert [m["text"] for m in replayed if m["type"] == "chat"] == [f"missed {n}" for n in range(3)]
        await host.request({"type": "chat", "id": 20, "text": "live"})
        assert (await back.recv_type("chat"))["text"] == "live"
        # A seq from before what the history keeps: a snapshot instead.
        old, snapshot = await joined(b, "old", query="&since=1")
        assert snapshot["type"] == "snapshot" and snapshot["seq"] >= latest + 1
        for client in (host, back, old):
            await client.close()


async def test_nodes_ride_out_redis_going_away(config: Config, tmp_path: Path, own_redis: RedisServer) -> None:
    async with cluster(config, tmp_path, own_redis.url, "livecart-test:", 2) as (a, b):
        on_a, _ = await joined(a, "ann")
        on_b, _ = await joined(b, "bob")
        sender, _ = await joined(a, "cat")
        reply = await sender.request({"type": "chat", "id": 1, "text": "before"})
        assert reply["type"] == "ack", reply
        last = (await on_b.recv_type("chat"))["seq"]
        await on_a.recv_type("chat")
        own_redis.stop()

        async def degraded() -> bool:
            view = await health(a)
            return view["status"] == "degraded" and not view["bus"]["connected"]

        await eventually(degraded)
        assert "livecart_bus_connected 0.0" in await metrics(a)
        refused = await sender.request({"type": "chat", "id": 2, "text": "while down"})
        assert refused["type"] == "error" and refused["code"] == "unavailable"

        own_redis.start()  # with its append-only file: the room's history as it was

        async def recovered() -> bool:
            return [(await health(app))["status"] for app in (a, b)] == ["ok", "ok"]

        await eventually(recovered)
        assert (await health(a))["bus"]["reconnects"] >= 1
        exposed = await metrics(a)
        assert "livecart_bus_connected 1.0" in exposed and "livecart_bus_reconnects_total" in exposed
        ack = await sender.request({"type": "chat", "id": 3, "text": "after"})
        assert ack["type"] == "ack"
        # The same websockets, no snapshot: the stream goes on right after what they had.
        got_a, got_b = await on_a.recv_type("chat"), await on_b.recv_type("chat")
        assert got_a == got_b and got_a["text"] == "after" and got_a["seq"] > last
        for client in (on_a, on_b, sender):
            await client.close()


async def test_a_room_loaded_while_redis_is_down_refuses_resumably(config: Config, tmp_path: Path,
                                                                   own_redis: RedisServer) -> None:
    async with cluster(config, tmp_path, own_redis.url, "livecart-test:", 1) as (a,):
        own_redis.stop()
        await eventually(lambda: _async(not a.bus.health()["connected"]))
        client = await connect(a, token(a, sub="ann"))
        error = await client.recv()
        assert error["type"] == "error" and error["code"] == "unavailable"
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1012  # reconnect (with since) later


async def test_redis_that_lost_its_data_resyncs_clients_with_a_snapshot(config: Config, tmp_path: Path) -> None:
    server = RedisServer(appendonly=False)
    server.start()
    try:
        async with cluster(config, tmp_path, server.url, "livecart-test:", 2) as (a, b):
            on_a, _ = await joined(a, "ann")
            on_b, _ = await joined(b, "bob")
            sender, _ = await joined(b, "cat")
            await sender.request({"type": "chat", "id": 1, "text": "before"})
            old = (await on_b.recv_type("chat"))["seq"]
            server.stop()
            await eventually(lambda: _async(not a.bus.health()["connected"]))
            server.start()  # empty
            resync_a, resync_b = await on_a.recv_type("snapshot", 10), await on_b.recv_type("snapshot", 10)
            assert resync_a["resync"] is True and resync_b["resync"] is True
            assert resync_a["seq"] > old  # above every seq of the lost stream
            await eventually(lambda: _async(b.bus.health()["connected"]))
            assert (await sender.request({"type": "chat", "id": 2, "text": "after"}))["type"] == "ack"
            after = await on_a.recv_type("chat")
            assert after["text"] == "after" and after["seq"] > resync_a["seq"]
            for client in (on_a, on_b, sender):
                await client.close()
    finally:
        server.close()


async def _async(value: bool) -> bool:
    return value
