"""The node registry of one process: the node itself, on the monotonic clock.

Same semantics as the Redis registry (TTL expiry of nodes and claims) so the contract suite
runs unchanged against both; entries are bounded by the nodes and rooms announced, and an
expired one is dropped when next looked at.
"""

from __future__ import annotations

import time

from engine.nodes.base import NodeInfo


class MemoryNodeRegistry:
    """Nodes and publisher claims in dicts, each with its deadline."""

    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("the node TTL must be positive")
        self.ttl = ttl
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._claims: dict[str, tuple[str, float]] = {}

    def _prune(self) -> float:
        now = time.monotonic()
        for node_id in [n for n, (_, deadline) in self._nodes.items() if deadline <= now]:
            del self._nodes[node_id]
        for room in [r for r, (_, deadline) in self._claims.items() if deadline <= now]:
            del self._claims[room]
        return now

    async def heartbeat(self, node: NodeInfo) -> list[str]:
        now = self._prune()
        self._nodes[node.id] = (node, now + self.ttl)
        return [room for room in node.publishers if await self.claim(room, node.id) != node.id]

    async def nodes(self) -> list[NodeInfo]:
        self._prune()
        return [info for _, (info, _) in sorted(self._nodes.items())]

    async def leave(self, node: NodeInfo) -> None:
        self._nodes.pop(node.id, None)
        for room in [r for r, (holder, _) in self._claims.items() if holder == node.id]:
            del self._claims[room]

    async def claim(self, room: str, node_id: str) -> str:
        now = self._prune()
        holder = self._claims.get(room)
        if holder is not None and holder[0] != node_id:
            return holder[0]
        self._claims[room] = (node_id, now + self.ttl)
        return node_id

    async def release(self, room: str, node_id: str) -> bool:
        self._prune()
        holder = self._claims.get(room)
        if holder is None or holder[0] != node_id:
            return False
        del self._claims[room]
        return True

    async def publisher_node(self, room: str) -> str | None:
        self._prune()
        holder = self._claims.get(room)
        return None if holder is None else holder[0]
