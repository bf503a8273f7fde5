"""The coalescing tick stretches while the event loop is loaded and returns to the configured tick
when it is quiet; sold out is announced at once whatever the tick."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import websockets
from commercekit import MUG, Clock, Rest, joined, running

from engine.config import Config
from tests.conftest import Client

QUIET_MS, MAX_MS = 20, 320


@contextlib.asynccontextmanager
async def loop_load(slice_seconds: float = 0.03) -> AsyncIterator[None]:
    """Keep the loop busy: block it in slices, letting everything else run only in between."""

    async def burn() -> None:
        while True:
            time.sleep(slice_seconds)
            await asyncio.sleep(0)

    task = asyncio.create_task(burn())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def tapping(tapper: Client, sale: str) -> AsyncIterator[None]:
    """Tap `sale` about a hundred times a second (acks are read and dropped)."""

    async def tap() -> None:
        n = 0
        while True:
            n += 1
            await tapper.send({"type": "tap", "id": f"t{n}", "sale_id": sale})
            await asyncio.sleep(0.01)

    async def drain() -> None:
        while True:
            await tapper.recv(timeout=60)

    tasks = [asyncio.create_task(tap()), asyncio.create_task(drain())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Watcher:
    """Records every message a watcher receives, with the loop time it arrived."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                message = await self.client.recv(timeout=60)
                self.seen.append((loop.time(), message))

    def remaining_updates(self, sale: str, since: float) -> list[dict[str, Any]]:
        return [m for t, m in self.seen if t >= since and m["type"] == "sale.remaining" and m["key"].endswith(sale)]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()


async def tick_gauge(rest: Rest) -> float:
    async with rest.session.get(rest.base + "/metrics") as response:
        text = await response.text()
    line = next(line for line in text.splitlines() if line.startswith("livecart_bus_tick_seconds "))
    return float(line.split()[1])


async def test_the_tick_stretches_under_load_and_returns_when_quiet(config: Config, clock: Clock) -> None:
    async with running(config.replace(tick_ms=QUIET_MS, tick_max_ms=MAX_MS), clock) as app, \
            aiohttp.ClientSession() as session:
        rest = Rest(app, session)
        host, _ = await joined(app, "host", "hana")
        await host.request({"type": "product.put", "id": 1, "product": MUG})
        await host.request({"type": "sale.start", "id": 2, "sale": {
            "id": "flash", "product_id": "mug", "price": 5, "quantity": 5000, "per_user_limit": 1000,
            "duration": 600}})
        watcher = Watcher((await joined(app, sub="walt"))[0])
        tapper, _ = await joined(app, sub="tara")
        loop = asyncio.get_running_loop()

        async with tapping(tapper, "flash"):
            start = loop.time()
            await asyncio.sleep(1.0)
            quiet = len(watcher.remaining_updates("flash", start))
            assert await tick_gauge(rest) == QUIET_MS / 1000

            async with loop_load():
                await asyncio.sleep(1.0)  # the tick stretches within a few ticks
                start = loop.time()
                await asyncio.sleep(1.5)
                loaded = len(watcher.remaining_updates("flash", start)) / 1.5
                assert app.bus.tick == MAX_MS / 1000
                assert await tick_gauge(rest) == MAX_MS / 1000

            await asyncio.sleep(2.0)  # back to the configured tick within a few ticks
            assert app.bus.tick == QUIET_MS / 1000
            start = loop.time()
            await asyncio.sleep(1.0)
            recovered = len(watcher.remaining_updates("flash", start))

        # At 20 ms a quiet second carries tens of updates; at 320 ms a loaded one a handful.
        assert quiet >= 15 and recovered >= 15, (quiet, recovered)
        assert loaded <= 6 and loaded * 3 < min(quiet, recovered), (quiet, loaded, recovered)

        # The latest value wins: the last update a watcher got is the sale's remaining quantity.
        await asyncio.sleep(0.2)
        status, body = await rest.call("GET", "/api/rooms/demo/sales/flash")
        assert status == 200
        assert watcher.remaining_updates("flash", 0)[-1]["remaining"] == body["sale"]["remaining"] < 5000

        await watcher.close()
        for client in (host, tapper):
            await client.close()


async def test_sold_out_is_not_held_back_by_a_stretched_tick(config: Config, clock: Clock) -> None:
    async with running(config.replace(tick_ms=QUIET_MS, tick_max_ms=MAX_MS), clock) as app:
        host, _ = await joined(app, "host", "hana")
        await host.request({"type": "product.put", "id": 1, "product": MUG})
        await host.request({"type": "sale.start", "id": 2, "sale": {
            "id": "last", "product_id": "mug", "price": 5, "quantity": 1, "duration": 600}})
        watcher = Watcher((await joined(app, sub="walt"))[0])
        buyer, _ = await joined(app, sub="bea")

        async with loop_load():
            await asyncio.sleep(1.0)
            assert app.bus.tick == MAX_MS / 1000
            ack = await buyer.request({"type": "tap", "id": "b1", "sale_id": "last"})
            assert ack["type"] == "ack"
            async with asyncio.timeout(5):
                while not any(m["type"] == "sale.remaining" and m["remaining"] == 0 for _, m in watcher.seen):
                    await asyncio.sleep(0.01)

        # The discrete sold-out went out with the tap; the coalesced counter waited for the tick.
        sale = [m for _, m in watcher.seen if m["type"] in ("sale.sold_out", "sale.remaining")]
        sold_out = next(i for i, m in enumerate(sale) if m["type"] == "sale.sold_out")
        zero = next(i for i, m in enumerate(sale) if m["type"] == "sale.remaining" and m["remaining"] == 0)
        assert sold_out < zero, sale

        await watcher.close()
        for client in (host, buyer):
            await client.close()
