"""Taps straight on the Redis stock store: round trips per tap and taps per second.

Runs N concurrent tappers (each its own user, on one or more store instances sharing the prefix,
as nodes would) against one pool, reads Redis's INFO commandstats before and after, and prints
the calls per tap and the rate. Usage:

    python -m bench.stock_redis [--url redis://127.0.0.1:6379/0] [--taps 20000] [--tappers 50] [--nodes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import redis.asyncio as aioredis

from overlays.stock.redis import RedisStockStore


async def commandstats(client: aioredis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, microseconds spent in it) since Redis started."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--taps", type=int, default=20000)
    parser.add_argument("--tappers", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()
    prefix = f"livecart-bench:{uuid.uuid4().hex[:8]}:"
    nodes = [RedisStockStore.from_url(args.url, prefix=prefix, timeout=5.0, max_connections=args.tappers)
             for _ in range(args.nodes)]
    admin = aioredis.from_url(args.url)
    await nodes[0].define("bench", "drop", args.taps + args.nodes)  # every tap reserves (and each warm-up one)
    for node in nodes:  # scripts loaded before counting (a real node loads them on its first calls)
        await node.counters("bench", "drop")
        await node.reserve("bench", "drop", "warm", "warm", 1, None, time.time() + 600, 100)
    per_tapper = args.taps // args.tappers

    async def tapper(n: int) -> None:
        node = nodes[n % len(nodes)]
        until = time.time() + 600
        for i in range(per_tapper):
            result = await node.reserve("bench", "drop", f"user{n}", f"t{i}", 1, None, until, 100)
            assert result.ok, result

    before = await commandstats(admin)
    started = time.perf_counter()
    await asyncio.gather(*(tapper(n) for n in range(args.tappers)))
    elapsed = time.perf_counter() - started
    after = await commandstats(admin)
    taps = per_tapper * args.tappers
    calls = {name: after[name][0] - before.get(name, (0, 0))[0] for name in after}
    script_usec = after["evalsha"][1] - before.get("evalsha", (0, 0))[1]
    print(f"{taps} taps from {args.tappers} tappers on {args.nodes} store instances in {elapsed:.2f} s: "
          f"{taps / elapsed:,.0f} taps/s")
    print("Redis commands during the taps (INFO commandstats):",
          {name: n for name, n in sorted(calls.items()) if n and name not in ("info",)})
    print(f"EVALSHA per tap: {calls.get('evalsha', 0) / taps:.3f} (the other commands run inside the "
          f"scripts); Redis spent {script_usec / max(calls.get('evalsha', 1), 1):.1f} us per script, "
          f"a ceiling of {1e6 * calls.get('evalsha', 0) / max(script_usec, 1):,.0f} taps/s for one Redis")
    counters = await nodes[0].counters("bench", "drop")
    print("counters after:", counters)
    keys = [key async for key in admin.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await admin.delete(*keys)
    await admin.aclose()
    for node in nodes:
        await node.close()


if __name__ == "__main__":
    asyncio.run(main())
