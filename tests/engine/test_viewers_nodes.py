"""A room's viewer count over two real `livecart serve --redis-url` processes: the figure every
viewer sees, the snapshots and the room's REST answer are the sum of both nodes' viewers, and the
viewers of a node that dies leave the sum within its TTL."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster_nodes import Node
from tests.commerce.test_commerce_cross_node import serve
from tests.conftest import Client, RedisTarget

# A dead node's viewers leave within --node-ttl, and its rooms' clocks move within --lease-ttl.
FAST = ("--node-ttl", "2", "--node-heartbeat", "0.5", "--lease-ttl", "1", "--viewers-interval", "0.2")


async def count_reaches(client: Client, count: int, timeout: float = 10.0) -> None:
    """Read ``viewers`` events until one says ``count``."""
    async with asyncio.timeout(timeout):
        while (await client.recv_type("viewers", timeout))["count"] != count:
            pass


async def room_viewers(node: Node, session: aiohttp.ClientSession) -> Any:
    return (await node.ok(session, "GET", "/api/rooms/demo"))["viewers"]


async def test_the_viewer_count_is_the_sum_over_nodes_and_drops_a_dead_nodes_viewers(
        tmp_path: Path, redis_target: RedisTarget, processes: list[subprocess.Popen[str]]) -> None:
    a = serve(processes, tmp_path / "a", "node-a", redis_target, *FAST)
    b = serve(processes, tmp_path / "b", "node-b", redis_target, *FAST)
    async with aiohttp.ClientSession() as session:
        on_a = [(await a.join(session, "viewer", f"ana{i}"))[0] for i in range(2)]
        on_b = [(await b.join(session, "viewer", f"bo{i}"))[0] for i in range(3)]
        # Every viewer, on either node, is told the room's five.
        await asyncio.gather(*(count_reaches(client, 5) for client in (*on_a, *on_b)))
        for node in (a, b):
            async with asyncio.timeout(5):
                while await room_viewers(node, session) != 5:
                    await asyncio.sleep(0.05)
        late, snapshot = await a.join(session, "viewer", "late")
        assert snapshot["viewers"] in (5, 6), snapshot["viewers"]  # with or without the one joining
        assert (await b.join(session, "viewer", "late2"))[1]["viewers"] in (6, 7)
        await count_reaches(on_a[0], 7)

        # Node B dies: its four viewers leave the count within its TTL (and the room's clock moves to A).
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        await count_reaches(on_a[0], 3, timeout=15.0)
        assert await room_viewers(a, session) == 3
        for client in (*on_a, late):
            await client.close()
