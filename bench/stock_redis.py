"""Taps straight on the Redis stock store: round trips per tap and taps per second.

Runs N concurrent tappers (each its own user, on one or more store instances sharing the prefix,
as nodes would) against one pool on a redis-server of its own (so INFO commandstats counts only
these taps; --url to use another), reads INFO commandstats before and after, and writes the
calls per tap, the rate and Redis's time per script to bench/results/stock_redis.{md,json}
(medians of --runs). Usage:

    python bench/stock_redis.py [--url redis://HOST:PORT/DB] [--taps 20000] [--tappers 50] [--nodes 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from measure import fmt, markdown_table, median, record, write_results
from redis_meter import RedisMeter, own_redis, wait_for

from overlays.stock.redis import RedisStockStore


async def one_run(url: str, taps: int, tappers: int, nodes_count: int) -> dict[str, Any]:
    """One run on a fresh key prefix: every tap reserves one unit of one pool."""
    prefix = f"livecart-bench:{uuid.uuid4().hex[:8]}:"
    nodes = [RedisStockStore.from_url(url, prefix=prefix, timeout=5.0, max_connections=tappers)
             for _ in range(nodes_count)]
    admin = aioredis.from_url(url)
    await nodes[0].define("bench", "drop", taps + nodes_count)  # every tap reserves (and each warm-up one)
    for node in nodes:  # scripts loaded before counting (a real node loads them on its first calls)
        await node.counters("bench", "drop")
        await node.reserve("bench", "drop", "warm", "warm", 1, None, time.time() + 600, 100)
    per_tapper = taps // tappers

    async def tapper(n: int) -> None:
        node = nodes[n % len(nodes)]
        until = time.time() + 600
        for i in range(per_tapper):
            result = await node.reserve("bench", "drop", f"user{n}", f"t{i}", 1, None, until, 100)
            assert result.ok, result

    meter = RedisMeter(url)
    meter.start()
    started = time.perf_counter()
    await asyncio.gather(*(tapper(n) for n in range(tappers)))
    elapsed = time.perf_counter() - started
    usage = meter.stop()
    meter.close()
    done = per_tapper * tappers
    calls = usage.commands
    script_usec = usage.usec.get("evalsha", 0)
    counters = await nodes[0].counters("bench", "drop")
    keys = [key async for key in admin.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await admin.delete(*keys)
    await admin.aclose()
    for node in nodes:
        await node.close()
    return {"taps": done, "seconds": elapsed, "taps_per_s": done / elapsed, "commands": calls,
            "evalsha_per_tap": calls.get("evalsha", 0) / done,
            "inside_scripts": sum(n for name, n in calls.items() if name != "evalsha"),
            "redis_us_per_script": script_usec / max(calls.get("evalsha", 1), 1),
            "reserved_after": counters.reserved if counters else None}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="a Redis to use instead of one started for the bench")
    parser.add_argument("--taps", type=int, default=20000)
    parser.add_argument("--tappers", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="stock_redis")
    args = parser.parse_args()
    run = record("stock_redis")
    runs = []
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(own_redis())
        wait_for(url)
        for k in range(args.runs):
            runs.append(await one_run(url, args.taps, args.tappers, args.nodes))
            print({"run": k + 1, **runs[-1]}, flush=True)
    rows = [[k + 1, fmt(r["taps"]), fmt(r["taps_per_s"], 0), fmt(r["evalsha_per_tap"], 3), fmt(r["inside_scripts"]),
             fmt(r["redis_us_per_script"]), fmt(r["reserved_after"])] for k, r in enumerate(runs)]
    rows.append(["median", "", fmt(median(r["taps_per_s"] for r in runs), 0),
                 fmt(median(r["evalsha_per_tap"] for r in runs), 3), "",
                 fmt(median(r["redis_us_per_script"] for r in runs)), ""])
    table = markdown_table(["run", "taps", "taps/s (one Python process)", "EVALSHA per tap",
                            "commands run inside the scripts", "Redis µs per tap script", "reserved after"], rows)
    print(write_results(args.name, run, table + "\n", {"runs": runs}))


if __name__ == "__main__":
    asyncio.run(main())
