"""This node in the registry: its heartbeat (id, URLs, load) and the publishers it holds.

The media relay tells ``publisher(room, attached)`` when a room's publisher attaches or leaves;
the claim is made at once and refreshed at every heartbeat, so if this node dies its claims
lapse with its TTL. The last list of live nodes seen is kept for /healthz.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from engine.nodes.base import Load, NodeInfo, NodeRegistry, Relay
from engine.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class CpuMeter:
    """This process's CPU use (cores busy) between two readings."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def read(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        used = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._cpu, self._wall = cpu, wall
        return round(used, 3)


class Presence:
    """Heartbeats ``node_id`` into ``registry`` every ``interval`` seconds while started."""

    def __init__(
        self,
        registry: NodeRegistry,
        node_id: str,
        urls: Callable[[], tuple[str, str]],
        load: Callable[[], tuple[int, int]],
        interval: float,
        media_free: Callable[[], int] = lambda: 0,
        relays: Callable[[], tuple[Relay, ...]] = tuple,
    ) -> None:
        if not 0 < interval < registry.ttl:
            raise ValueError("the heartbeat interval must be positive and shorter than the node TTL")
        self.registry = registry
        self.node_id = node_id
        self.interval = interval
        self._urls = urls
        self._load = load
        self._media_free = media_free
        self._relays = relays
        self._cpu = CpuMeter()
        self._publishers: set[str] = set()
        self._refused: set[str] = set()
        self._nodes: list[NodeInfo] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._failing = False

    def info(self) -> NodeInfo:
        """This node's announcement now."""
        http_url, ws_url = self._urls()
        viewers, connections = self._load()
        return NodeInfo(self.node_id, http_url, ws_url,
                        Load(viewers, connections, self._cpu.read(), self._media_free()),
                        tuple(sorted(self._publishers)), self._relays())

    def view(self) -> dict[str, Any]:
        """For /healthz: this node's id, the publishers it holds, and the live nodes last seen."""
        return {"id": self.node_id, "publishers": sorted(self._publishers),
                "nodes": [node.to_dict() for node in self._nodes]}

    def view_nodes(self) -> list[NodeInfo]:
        """The live nodes as the last heartbeat listed them."""
        return list(self._nodes)

    def publisher(self, room: str, attached: bool) -> None:
        """The media relay's hook: ``room``'s publisher attached to (True) or left (False) this node."""
        if attached:
            self._publishers.add(room)
            self._spawn(self._claim(room))
        else:
            self._publishers.discard(room)
            self._refused.discard(room)
            self._spawn(self.registry.release(room, self.node_id))

    async def _claim(self, room: str) -> None:
        holder = await self.registry.claim(room, self.node_id)
        if holder != self.node_id:
            self._refused_claim(room, holder)

    def _refused_claim(self, room: str, holder: str) -> None:
        if room not in self._refused:
            self._refused.add(room)
            log.warning("room %s: its publisher is here, but node %s holds the room's publisher claim", room, holder)

    async def start(self) -> None:
        """Announce this node once (others see it from the start), then keep heartbeating."""
        await self.beat()
        self._beat = asyncio.get_running_loop().create_task(self._run(), name="node-heartbeat")

    async def stop(self) -> None:
        """Stop heartbeating and leave the registry, releasing the claims (others need not wait the TTL)."""
        await cancel_and_wait(self._beat)
        self._beat = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.registry.leave(self.info())
        except Exception as exc:
            log.warning("node %s: could not leave the registry (%s); it lapses with its TTL", self.node_id, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.beat()

    async def beat(self) -> None:
        """One heartbeat, then a fresh list of live nodes; a registry that fails is logged once until it answers."""
        try:
            refused = await self.registry.heartbeat(self.info())
            self._refused &= set(refused)  # a claim granted since may be refused and reported again later
            for room in refused:
                self._refused_claim(room, await self.registry.publisher_node(room) or "another")
            self._nodes = await self.registry.nodes()
        except Exception as exc:
            if not self._failing:
                log.warning("node %s: heartbeat failed (%s); others see this node gone after %.1f s",
                            self.node_id, exc, self.registry.ttl)
            self._failing = True
            return
        if self._failing:
            log.info("node %s: heartbeat answered again", self.node_id)
        self._failing = False

    def _spawn(self, coro: Any) -> None:
        async def logged() -> None:
            try:
                await coro
            except Exception as exc:
                log.warning("node %s: publisher claim or release not recorded (%s): a claim is made again at the "
                            "next heartbeat, a release lapses with the TTL", self.node_id, exc)

        task = asyncio.get_running_loop().create_task(logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
