"""Taps straight on the Redis stock store: round trips per tap and taps per second.

Runs N concurrent tappers (each its own user, on one or more store instances sharing the prefix,
as nodes would) against one pool on a redis-server of its own (so INFO commandstats counts only
these taps; --url to use another), reads INFO commandstats before and after, and writes the
calls per tap, the rate and Redis's time per script to bench/results/stock_redis.{md,json}
(medians of --runs). Usage:

    python -m bench.stock_redis [--url redis://HOST:PORT/DB] [--taps 20000] [--tappers 50] [--nodes 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis

from bench.measure import fmt, free_port, markdown_table, median, record, write_results
from overlays.stock.redis import RedisStockStore


async def commandstats(client: aioredis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, microseconds spent in it) since Redis started."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server for this bench alone (no persistence), on a free loopback port: its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server), or pass --url")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="livecart-bench-redis-")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                                "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


async def wait_for(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        for _ in range(500):
            with contextlib.suppress(OSError, aioredis.ConnectionError):
                await client.ping()
                return
            await asyncio.sleep(0.01)
        raise SystemExit(f"no Redis answers at {url}")
    finally:
        await client.aclose()


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

    before = await commandstats(admin)
    started = time.perf_counter()
    await asyncio.gather(*(tapper(n) for n in range(tappers)))
    elapsed = time.perf_counter() - started
    after = await commandstats(admin)
    done = per_tapper * tappers
    calls = {name: after[name][0] - before.get(name, (0, 0))[0] for name in after}
    calls = {name: n for name, n in sorted(calls.items()) if n and name != "info"}
    script_usec = after["evalsha"][1] - before.get("evalsha", (0, 0))[1]
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
        await wait_for(url)
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
