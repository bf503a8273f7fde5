"""A node whose Redis dies while checkouts are in flight: every action is answered (an order, or the
retryable `unavailable`) within a bounded time, never left hanging; once Redis is back, retries
with the same request ids complete, and orders and the purchase stream agree exactly: each order
placed once, logged once, nothing logged without its order.

Redis runs with appendonly yes and appendfsync always (tests.redis_server), the setting under
which an acknowledged order survives Redis being killed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from commercekit import MUG, joined, running

from engine.config import Config
from tests.redis_server import RedisServer

BUYERS = 8
SPACING = 0.02  # seconds between two buyers' checkouts
ANSWER_WITHIN = 5.0  # seconds: two Redis timeouts (0.5 s each) and a connect, with room for a loaded machine


async def test_redis_killed_during_checkouts_then_orders_and_log_agree(config: Config, tmp_path: Path) -> None:
    server = RedisServer()
    server.start()
    try:
        node = config.replace(data_dir=str(tmp_path / "node"), redis_url=server.url, redis_timeout=0.5)
        async with running(node) as app:
            host, _ = await joined(app, "host", "hana")
            await host.request({"type": "product.put", "id": 1, "product": {**MUG, "stock": 100}})
            buyers = [(await joined(app, sub=f"u{n}"))[0] for n in range(BUYERS)]
            for buyer in buyers:
                assert (await buyer.request({"type": "tap", "id": "t1", "product_id": "mug"}))["type"] == "ack"

            # Checkouts one after the other while Redis is killed among them (from another thread, as a
            # crash would): those before the kill are placed, those after answered `unavailable`.
            async def checkout(n: int) -> dict[str, Any]:
                await asyncio.sleep(n * SPACING)
                return await buyers[n].request({"type": "checkout", "id": "c1"}, ANSWER_WITHIN)

            def kill() -> None:
                time.sleep(BUYERS * SPACING / 2)
                server.stop()

            killed = asyncio.get_running_loop().run_in_executor(None, kill)
            replies = await asyncio.gather(*(checkout(n) for n in range(BUYERS)))
            await killed
            assert all(r["type"] == "ack" or r["code"] == "unavailable" for r in replies), replies

            # While it is down: answered `unavailable`, not left hanging.
            down = await buyers[0].request({"type": "checkout", "id": "c2"}, ANSWER_WITHIN)
            assert down["type"] == "error" and down["code"] == "unavailable", down

            await asyncio.get_running_loop().run_in_executor(None, server.start)
            orders: dict[str, str] = {}
            async with asyncio.timeout(30):
                for n, buyer in enumerate(buyers):
                    while True:  # retry with the same request id until Redis answers again
                        reply = await buyer.request({"type": "checkout", "id": "c1"}, ANSWER_WITHIN)
                        if reply["type"] == "ack":
                            orders[f"u{n}"] = reply["order"]["id"]
                            break
                        assert reply["code"] == "unavailable", reply
                        await asyncio.sleep(0.1)
            for n, r in enumerate(replies):  # an order acknowledged before the crash survived it
                if r["type"] == "ack":
                    assert orders[f"u{n}"] == r["order"]["id"]

            stored = await app.commerce.records.orders("demo", None, 100, 0)
            assert sorted(o["id"] for o in stored) == sorted(orders.values())
            entries = await app.commerce.log.read(None, 1000)
            logged = Counter((e.event["subject"], e.event["type"]) for e in entries)
            assert logged == Counter({(order_id, "livecart.order.placed"): 1 for order_id in orders.values()})
            ids = [int(e.id) for e in entries]
            assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous: nothing lost, nothing twice
    finally:
        server.close()
