"""This node among others: its room clock leases and its place in the node registry.

Alone (no ``--redis-url``) both run on memory backends: the one node holds every lease and is
the only node listed. With ``--redis-url`` they run on Redis under ``--redis-prefix``, so
several ``livecart serve`` processes share the rooms' clocks (each room's on one node at a
time) and see each other.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Gauge
from redis.asyncio import Redis

from engine.config import Config
from engine.leases.base import Leases
from engine.leases.keeper import LeaseKeeper
from engine.leases.memory import MemoryLeases
from engine.leases.redis import RedisLeases
from engine.nodes.base import NodeInfo, NodeRegistry, Relay
from engine.nodes.memory import MemoryNodeRegistry
from engine.nodes.presence import Presence
from engine.nodes.redis import RedisNodeRegistry

ROOM_CLOCKS = Gauge("livecart_room_clocks", "Rooms whose clock (expiry, sale start and end) runs on this node")
NODES = Gauge("livecart_nodes", "Live nodes in the node registry, this one included, at the last heartbeat")


def node_id(config: Config) -> str:
    """``--node-id``, else the host name with a random suffix (a restarted process is a new node)."""
    if config.node_id:
        if any(ch.isspace() for ch in config.node_id) or len(config.node_id) > 128:
            raise ValueError("--node-id must be 1-128 characters without spaces")
        return config.node_id
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


class Cluster:
    """The leases keeper (rooms' clocks) and the presence (registry heartbeat) of this node."""

    def __init__(
        self,
        config: Config,
        rooms: Callable[[], Iterable[str]],
        urls: Callable[[], tuple[str, str]],
        load: Callable[[], tuple[int, int]],
        media_free: Callable[[], int] = lambda: 0,
        relays: Callable[[], tuple[Relay, ...]] = tuple,
    ) -> None:
        if not 0 < config.node_heartbeat < config.node_ttl:
            raise ValueError("--node-heartbeat must be positive and shorter than --node-ttl")
        if config.lease_ttl <= 0:
            raise ValueError("--lease-ttl must be positive")
        self.node_id = node_id(config)
        self.redis: Redis | None = None
        leases: Leases
        registry: NodeRegistry
        if config.redis_url:
            # A call that hangs is given up after a third of the lease TTL: the next renewal is due then.
            wait = config.lease_ttl / 3
            self.redis = Redis.from_url(config.redis_url, socket_timeout=wait, socket_connect_timeout=wait)
            leases = RedisLeases(self.redis, config.redis_prefix)
            registry = RedisNodeRegistry(self.redis, config.redis_prefix, config.node_ttl)
        else:
            leases = MemoryLeases()
            registry = MemoryNodeRegistry(config.node_ttl)
        self.clocks = LeaseKeeper(leases, self.node_id, config.lease_ttl, rooms)
        self.presence = Presence(registry, self.node_id, urls, load, config.node_heartbeat, media_free,
                                 relays)
        self._started = False

    async def start(self) -> None:
        self._started = True
        await self.presence.start()
        await self.clocks.start()
        ROOM_CLOCKS.set_function(lambda: len(self.clocks.held()))
        NODES.set_function(lambda: len(self.presence.view()["nodes"]))

    async def stop(self) -> None:
        if self._started:
            await self.clocks.stop()
            await self.presence.stop()
        if self.redis is not None:
            await self.redis.aclose()

    async def origin(self, room: str) -> tuple[NodeInfo | None, list[NodeInfo]]:
        """The live node holding ``room``'s publisher (None if none), and the live nodes as last listed
        (with the rooms each relays), so an edge can pick its upstream in the room's cascade."""
        holder = await self.presence.registry.publisher_node(room)
        nodes = self.presence.view_nodes()
        if holder is None:
            return None, nodes
        if holder not in {node.id for node in nodes}:  # it joined since the last heartbeat's list
            nodes = await self.presence.registry.nodes()
        return next((node for node in nodes if node.id == holder), None), nodes

    def roomiest(self) -> NodeInfo | None:
        """Another live node that takes more media viewers (the most free sessions), as the last heartbeat saw it."""
        others = [node for node in self.presence.view_nodes()
                  if node.id != self.node_id and node.load.media_free > 0]
        return max(others, key=lambda node: (node.load.media_free, node.id), default=None)

    def view(self) -> dict[str, Any]:
        """For /healthz: this node, the rooms whose clock it runs, the publishers it holds, the live nodes."""
        return {**self.presence.view(), "clocks": self.clocks.held()}
