"""Durability: SIGKILL `livecart serve` in the middle of a flash sale, start it again on the same
data directory, and check that nothing acknowledged was lost and the purchase log reads exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import websockets
from websockets.exceptions import ConnectionClosed

from signaling.tokens import mint
from tests.conftest import free_port

SECRET = "durability-secret-" + "x" * 32
ADMIN = "durability-admin"
QUANTITY = 60


class Server:
    """One `livecart serve` process on free ports over a given data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.http_port, self.ws_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            ["livecart", "serve", "--http-port", str(self.http_port), "--ws-port", str(self.ws_port),
             "--data-dir", str(data_dir), "--secret", SECRET, "--admin-key", ADMIN, "--demo-room", "demo",
             "--tap-rate", "1000", "--tap-burst", "1000", "--msg-rate", "1000", "--msg-burst", "1000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.http_port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "livecart serve exited"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.base + "/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise TimeoutError("livecart serve did not come up")

    async def call(self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        async with http.request(method, self.base + path, json=body,
                                headers={"Authorization": f"Bearer {ADMIN}"}) as response:
            assert response.status < 300, (response.status, await response.text())
            return await response.json()

    def ws(self, room: str, role: str, sub: str) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws?token={mint(SECRET, room, role, sub, 600)}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


async def _shopper(server: Server, sub: str, acked: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """Tap and check out in a loop; every acknowledged order goes to `acked`."""
    with contextlib.suppress(ConnectionClosed, OSError):
        async with websockets.connect(server.ws("demo", "viewer", sub), max_queue=None) as ws:
            n = 0
            while not stop.is_set():
                n += 1
                for request in ({"type": "tap", "id": f"{sub}-t{n}", "sale_id": "flash"},
                                {"type": "checkout", "id": f"{sub}-o{n}"}):
                    await ws.send(orjson.dumps(request))
                    while True:
                        reply = orjson.loads(await ws.recv())
                        if reply.get("re") == request["id"]:
                            break
                    if reply["type"] == "ack" and request["type"] == "checkout":
                        acked.append({**reply["order"], "request_id": request["id"]})
                    if reply["type"] == "error" and reply["code"] in ("sold_out", "limit_reached"):
                        return


async def _reader(server: Server, after: str | None, seen: list[tuple[str, dict[str, Any]]],
                  until: int | None = None) -> None:
    """A purchase-event service: subscribe after `after`, append (log id, event) to `seen`."""
    with contextlib.suppress(ConnectionClosed, OSError):
        async with websockets.connect(server.ws("*", "service", "ledger"), max_queue=None) as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
            await ws.send(orjson.dumps({"type": "subscribe", "id": "s", "after": after}))
            while until is None or len(seen) < until:
                message = orjson.loads(await ws.recv())
                if message["type"] == "purchase":
                    seen.append((message["id"], message["event"]))
                else:
                    assert message["type"] == "ack", message


async def test_sigkill_mid_sale_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    acked: list[dict[str, Any]] = []
    seen: list[tuple[str, dict[str, Any]]] = []
    try:
        async with aiohttp.ClientSession() as http:
            await server.ready(http)
            await server.call(http, "PUT", "/api/rooms/demo/products/mug", {
                "title": "Mug", "price": 1200, "currency": "EUR", "stock": 500})
            await server.call(http, "POST", "/api/rooms/demo/sales", {
                "id": "flash", "product_id": "mug", "price": 500, "quantity": QUANTITY, "per_user_limit": 3,
                "duration": 3600})
            reader = asyncio.create_task(_reader(server, None, seen))
            stop = asyncio.Event()
            shoppers = [asyncio.create_task(_shopper(server, f"user{i}", acked, stop)) for i in range(30)]
            while len(acked) < 15:  # in the middle of the sale: orders placed, many taps in flight
                await asyncio.sleep(0.002)
            server.kill()
            await asyncio.wait_for(asyncio.gather(*shoppers, reader), 10)
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert 15 <= len(acked) < QUANTITY  # the kill hit before the sale sold out

    server = Server(data_dir)
    try:
        async with aiohttp.ClientSession() as http:
            await server.ready(http)
            product = (await server.call(http, "GET", "/api/rooms/demo/products/mug"))["product"]
            assert product == {**product, "title": "Mug", "price": 1200, "stock": 500, "available": 500}
            sale = (await server.call(http, "GET", "/api/rooms/demo/sales/flash"))["sale"]
            assert sale == {**sale, "product_id": "mug", "price": 500, "quantity": QUANTITY, "per_user_limit": 3}
            orders = (await server.call(http, "GET", "/api/rooms/demo/orders?limit=1000"))["orders"]
            by_id = {order["id"]: order for order in orders}
            assert {order["id"] for order in acked} <= set(by_id)  # no acknowledged order lost
            sold = sum(line["quantity"] for order in orders for line in order["lines"])
            assert sale["remaining"] == QUANTITY - sold  # held-only units came back, sold ones did not

            # A checkout retried after the restart gets its original order back.
            retry = acked[0]
            async with websockets.connect(server.ws("demo", "viewer", retry["user"])) as ws:
                await ws.send(orjson.dumps({"type": "checkout", "id": retry["request_id"]}))
                while (reply := orjson.loads(await ws.recv())).get("re") != retry["request_id"]:
                    pass
                assert reply["type"] == "ack" and reply["order"]["id"] == retry["id"]

            # The service resumes after the last id it saw and ends with every order exactly once.
            last_seen = seen[-1][0] if seen else None
            await asyncio.wait_for(_reader(server, last_seen, seen, until=len(orders)), 10)
            ids = [log_id for log_id, _ in seen]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            placed = [event["subject"] for _, event in seen if event["type"] == "livecart.order.placed"]
            assert sorted(placed) == sorted(by_id)
            assert len(seen) == len(orders)
            status = await server.call(http, "GET", "/api/purchases?limit=1000")
            assert [entry["id"] for entry in status["entries"]] == ids
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(server.proc.pid, signal.SIGKILL)
