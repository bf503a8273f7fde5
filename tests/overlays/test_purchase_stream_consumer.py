"""The consumer docs/OPERATIONS.md shows for the purchase stream, run as written against a real
Redis: it reads and acknowledges what nodes appended, and when a consumer dies with entries
pending, another one claims and handles them, so every event is handled and acknowledged."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import redis
from backendkit import redis_log

from overlays.orders import Order, OrderLine
from tests.conftest import RedisTarget

DOCS = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def documented_consumer() -> str:
    """The python block of the "The purchase stream" section."""
    section = DOCS.read_text().split("### The purchase stream", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/OPERATIONS.md shows no consumer"
    return match.group(1)


def placed(n: int) -> dict[str, Any]:
    order = Order(f"o{n}", "demo", "host", f"u{n}", f"c{n}", "EUR",
                  [OrderLine("mug", None, "Mug", "mug", 1, 1200, 1200)], 1_700_000_000.0 + n)
    return order.cloud_event("placed")


async def test_the_documented_consumer_reads_acks_and_claims_a_dead_ones_entries(redis_target: RedisTarget) -> None:
    async with redis_log(redis_target.url, redis_target.prefix, max_entries=100) as log:  # creates "services"
        for n in range(3):
            await log.append(placed(n))
        consumer: dict[str, Any] = {"__name__": "documented_consumer"}
        exec(compile(documented_consumer(), str(DOCS), "exec"), consumer)
        client = redis.Redis.from_url(redis_target.url)
        consumer["r"] = client
        consumer["STREAM"] = log.stream  # the docs' stream under this test's prefix
        assert log.stream == f"{redis_target.prefix}{{purchases}}:stream"
        handled: list[str] = []
        consumer["handle"] = lambda event: handled.append(event["id"])
        try:
            assert consumer["step"]("ledger-1") == 3
            assert handled == ["o0.placed", "o1.placed", "o2.placed"]
            assert client.xpending(log.stream, "services")["pending"] == 0

            # A consumer that read two new entries and died before acknowledging them.
            for n in range(3, 5):
                await log.append(placed(n))
            taken = client.xreadgroup("services", "ledger-dead", {log.stream: ">"}, count=10)
            assert len(taken[0][1]) == 2
            assert client.xpending(log.stream, "services")["pending"] == 2

            assert consumer["step"]("ledger-2", idle_ms=0) == 2  # claimed once idle (here: at once)
            assert handled[3:] == ["o3.placed", "o4.placed"]
            assert client.xpending(log.stream, "services")["pending"] == 0
            assert consumer["step"]("ledger-2", idle_ms=0) == 0  # nothing handled twice
        finally:
            client.close()
