"""A shopper tapping at a steady pace while Redis stalls: the taps wait for Redis, in order, and
none is refused `rate_limited` for it. The node reads the shopper's connection while a tap waits,
so each tap meets the tap limit when the shopper sent it, not all together once Redis answers.

Redis is frozen (SIGSTOP) with its connections open, as a stalled host would be, for less than the
node's Redis timeout: the taps are answered late, not `unavailable`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from commercekit import MUG, joined, running

from engine.config import Config
from tests.redis_server import RedisServer

PACE = 0.2  # seconds between two taps: 5 taps/s, half the node's tap rate
TAPS = 8


async def test_taps_sent_within_the_rate_while_redis_stalls_are_all_answered_in_order(
        config: Config, tmp_path: Path) -> None:
    server = RedisServer(appendonly=False)
    server.start()
    try:
        node = config.replace(data_dir=str(tmp_path / "node"), redis_url=server.url, redis_timeout=5.0,
                              tap_rate=10.0, tap_burst=4)
        async with running(node) as app:
            host, _ = await joined(app, "host", "hana")
            await host.request({"type": "product.put", "id": 1, "product": {**MUG, "stock": 100}})
            shopper, _ = await joined(app, sub="sam")
            assert (await shopper.request({"type": "tap", "id": "warm", "product_id": "mug"}))["type"] == "ack"
            await asyncio.sleep(0.5)  # the tap bucket is full again

            server.pause()
            try:
                for n in range(TAPS):  # the first waits on Redis; the others arrive while it waits
                    await shopper.send({"type": "tap", "id": f"t{n}", "product_id": "mug"})
                    await asyncio.sleep(PACE)
            finally:
                server.resume()
            answers = await shopper.answers(TAPS, timeout=10)
            assert [(a["type"], a["re"]) for a in answers] == [("ack", f"t{n}") for n in range(TAPS)], answers
            assert answers[-1]["cart"]["quantity"] == TAPS + 1
    finally:
        server.close()
