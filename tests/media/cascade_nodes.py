"""Real `livecart serve` nodes sharing one Redis, for the media cascade tests.

Each node announces 127.0.0.1 as its only ICE address (every packet stays on loopback) and logs
to a file in its data directory (a pipe nobody reads would block a chatty node).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster_nodes import Node
from tests.conftest import RedisTarget, free_port

ADMIN = "cascade-admin-key"
SECRET = "cascade-secret-" + "s" * 32


class MediaNode(Node):
    """A node with its id and log file."""

    def __init__(self, proc: subprocess.Popen[str], http_port: int, ws_port: int, node_id: str, log: Path) -> None:
        super().__init__(proc, http_port, ws_port, ADMIN)
        self.id = node_id
        self.log = log

    async def media(self, session: aiohttp.ClientSession, room: str) -> dict[str, Any] | None:
        """This node's view of ``room``'s media (its /healthz ``media`` entry), None if it has none."""
        return (await self.ok(session, "GET", "/healthz"))["media"].get(room)

    async def metric(self, session: aiohttp.ClientSession, name: str, **labels: str) -> float:
        """One sample of this node's /metrics (0 when absent)."""
        async with session.get(self.http + "/metrics") as response:
            text = await response.text()
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        series = f"{name}{{{wanted}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0


def start_node(data_dir: Path, node_id: str, redis: RedisTarget, *extra: str) -> MediaNode:
    """Start one node (returns at once; ``ready`` waits for it to serve)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    http_port, ws_port = free_port(), free_port()
    log = data_dir / "node.log"
    command = [
        sys.executable, "-m", "engine.cli", "serve", "--http-port", str(http_port), "--ws-port", str(ws_port),
        "--data-dir", str(data_dir), "--redis-url", redis.url, "--redis-prefix", redis.prefix,
        "--node-id", node_id, "--node-heartbeat", "0.3", "--node-ttl", "3", "--lease-ttl", "3",
        "--admin-key", ADMIN, "--secret", SECRET, "--announce", "127.0.0.1", "--no-demo-catalog",
        "--edge-poll", "0.3", "--log-level", "info", *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    return MediaNode(proc, http_port, ws_port, node_id, log)


async def ready(session: aiohttp.ClientSession, *nodes: MediaNode, timeout: float = 30.0) -> None:
    """Wait until every node answers /healthz and lists them all as live nodes."""
    async with asyncio.timeout(timeout):
        for node in nodes:
            while True:
                assert node.proc.poll() is None, node.log.read_text()[-3000:]
                try:
                    async with session.get(node.http + "/healthz") as response:
                        if response.status == 200:
                            listed = {n["id"] for n in (await response.json())["node"]["nodes"]}
                            if {n.id for n in nodes} <= listed:
                                break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)


async def until(probe: Any, done: Any, timeout: float = 15.0) -> Any:
    """Await ``probe()`` until ``done(value)``; the last value."""
    async with asyncio.timeout(timeout):
        while True:
            value = await probe()
            if done(value):
                return value
            await asyncio.sleep(0.1)


def stop_nodes(nodes: list[MediaNode]) -> None:
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.terminate()
    for node in nodes:
        try:
            node.proc.wait(20)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(10)
