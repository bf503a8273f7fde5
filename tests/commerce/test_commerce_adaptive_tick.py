"""The coalescing tick stretches while the event loop is loaded and returns to the configured tick
when it is quiet; the latest counter value always goes out, and sold out (with the counter's zero)
is announced at once whatever the tick. On either bus: in this process, or on Redis.

Nothing here depends on how fast the machine is. The load is the loop itself held in slices (as a
saturated core holds it), so the ticker surely wakes late; every check waits, with a generous
bound, for something that surely happens (the gauge reaching the maximum while the loop is held,
falling back once it is released, the latest value reaching a watcher), rather than counting
updates per second or reading the gauge at a fixed moment: under a slice, a single wake-up can
land just after the slice and halve the interval for a tick, and a busy machine stretches every
wait of a loop that is held on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from commercekit import BACKENDS, MUG, Clock, Rest, joined, on_backend, running

from engine.app import App
from engine.config import Config
from tests.conftest import Client, RedisTarget

QUIET_MS, MAX_MS = 20, 320
# Bound on waits for what surely happens; on a quiet machine each takes well under a second,
# while every loop iteration of a held loop costs a slice and a loaded machine adds its own delays.
PATIENCE = 60.0


@pytest.fixture(params=BACKENDS)
def config(config: Config, request: pytest.FixtureRequest, redis_target: RedisTarget) -> Config:
    return on_backend(config, request.param, redis_target)


@contextlib.asynccontextmanager
async def loop_held(slice_seconds: float = 0.05) -> AsyncIterator[None]:
    """Hold the loop in slices, letting everything else run only in between: each timer that
    falls due inside a slice fires late, as on a core saturated with taps."""

    async def hold() -> None:
        while True:
            time.sleep(slice_seconds)
            await asyncio.sleep(0)

    task = asyncio.create_task(hold())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def tapping(tapper: Client, sale: str) -> AsyncIterator[None]:
    """Tap `sale` every 50 ms (as often as a held loop lets it); acks are read and dropped."""

    async def tap() -> None:
        n = 0
        while True:
            n += 1
            await tapper.send({"type": "tap", "id": f"t{n}", "sale_id": sale})
            await asyncio.sleep(0.05)

    async def drain() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in tapper.ws:
                pass

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
    """Records every message a watcher receives, in order."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.client.ws:
                self.seen.append(orjson.loads(frame))

    def of_sale(self, sale: str) -> list[dict[str, Any]]:
        """The sale's counter updates and sold-out announcements, in arrival order."""
        return [m for m in self.seen if m["type"] in ("sale.remaining", "sale.sold_out") and m["sale"] == sale]

    def last_remaining(self, sale: str) -> int | None:
        counts = [m["remaining"] for m in self.of_sale(sale) if m["type"] == "sale.remaining"]
        return counts[-1] if counts else None

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()


async def until(what: str, check: Callable[[], Any]) -> None:
    """Wait until `check()` (sync or async) is true; fail naming `what` after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {PATIENCE:.0f} s: {what}"
        await asyncio.sleep(0.02)


async def tick_gauge(rest: Rest) -> float:
    """The interval the ticker uses now, as operators read it from /metrics."""
    async with rest.session.get(rest.base + "/metrics") as response:
        text = await response.text()
    line = next(line for line in text.splitlines() if line.startswith("livecart_bus_tick_seconds "))
    return float(line.split()[1])


async def ticking_at(app: App, rest: Rest, ms: int) -> bool:
    """The engine's bus ticks every `ms` and the gauge says so (the gauge is the process's: it
    alone could show what an engine started before this one set)."""
    return app.bus.tick == ms / 1000 and await tick_gauge(rest) == ms / 1000


async def remaining(rest: Rest, sale: str) -> int:
    status, body = await rest.call("GET", f"/api/rooms/demo/sales/{sale}")
    assert status == 200, body
    return int(body["sale"]["remaining"])


async def open_sale(app: App, sale: str, quantity: int, per_user_limit: int) -> Client:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    ack = await host.request({"type": "sale.start", "id": 2, "sale": {
        "id": sale, "product_id": "mug", "price": 5, "quantity": quantity, "per_user_limit": per_user_limit,
        "duration": 3600}})
    assert ack["type"] == "ack", ack
    return host


def contiguous(messages: list[dict[str, Any]]) -> bool:
    """Room events in strictly consecutive seqs: none lost on the way."""
    seqs = [m["seq"] for m in messages if "seq" in m and m["type"] != "snapshot"]
    return all(b == a + 1 for a, b in zip(seqs, seqs[1:], strict=False))


async def test_the_tick_stretches_under_load_and_returns_when_quiet(config: Config, clock: Clock) -> None:
    async with running(config.replace(tick_ms=QUIET_MS, tick_max_ms=MAX_MS), clock) as app, \
            aiohttp.ClientSession() as session:
        rest = Rest(app, session)
        host = await open_sale(app, "flash", quantity=5000, per_user_limit=1000)
        watcher = Watcher((await joined(app, sub="walt"))[0])
        tapper, _ = await joined(app, sub="tara")
        await until("the configured tick while the loop is quiet", lambda: ticking_at(app, rest, QUIET_MS))

        async with loop_held():
            async with tapping(tapper, "flash"):
                await until("the tick stretched to --tick-max-ms while the loop is held",
                            lambda: ticking_at(app, rest, MAX_MS))
            # Taps have stopped; the loop is still held, the tick stretched: the latest value still
            # reaches the watcher. It is read again at each check: a tap sent just before the
            # tapper stopped may still be on its way through the store and lower it once more.
            async def watcher_has_latest() -> bool:
                left = await remaining(rest, "flash")
                assert left < 5000
                return watcher.last_remaining("flash") == left

            await until("the latest remaining at the watcher under a stretched tick", watcher_has_latest)

        await until("the configured tick again once the loop is released", lambda: ticking_at(app, rest, QUIET_MS))
        assert contiguous(watcher.seen), [m.get("seq") for m in watcher.seen]

        await watcher.close()
        for client in (host, tapper):
            await client.close()


async def test_sold_out_reaches_every_watcher_under_a_stretched_tick(config: Config, clock: Clock) -> None:
    async with running(config.replace(tick_ms=QUIET_MS, tick_max_ms=MAX_MS), clock) as app, \
            aiohttp.ClientSession() as session:
        rest = Rest(app, session)
        host = await open_sale(app, "last", quantity=1, per_user_limit=1)
        watchers = [Watcher((await joined(app, sub=f"watcher{i}"))[0]) for i in range(3)]
        buyer, _ = await joined(app, sub="bea")

        async with loop_held():
            await until("the tick stretched to --tick-max-ms while the loop is held",
                        lambda: ticking_at(app, rest, MAX_MS))
            ack = await buyer.request({"type": "tap", "id": "b1", "sale_id": "last"}, timeout=PATIENCE)
            assert ack["type"] == "ack", ack
            for watcher in watchers:
                await until("sold out and the counter at zero at every watcher",
                            lambda w=watcher: w.last_remaining("last") == 0)

        for watcher in watchers:
            # The sold-out went out with the tap, and the counter's zero with it (in the same batch),
            # not a stretched tick later. The batch carries every value pending in the room (the
            # viewer count, say), so only state values may sit between the two.
            sale = watcher.of_sale("last")
            kinds = [(m["type"], m["remaining"]) for m in sale]
            assert kinds[-2:] == [("sale.sold_out", 0), ("sale.remaining", 0)], kinds
            between = [m for m in watcher.seen if sale[-2]["seq"] < m.get("seq", 0) < sale[-1]["seq"]]
            assert all("key" in m for m in between), between
            assert contiguous(watcher.seen)
            await watcher.close()
        for client in (host, buyer):
            await client.close()
