"""The node registry interface: nodes announce themselves with a heartbeat and a TTL.

A node that stops heartbeating (it died, or lost its network) drops out of the list once its
TTL runs out, and so do its claims on rooms' publishers: nobody has to clean up after a dead
node for the others to see it gone (LiveKit's node map works the same way: a node whose stats
are older than a few seconds is unavailable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Load:
    """What a node carries: viewers (people, each once), open connections (websocket and media), CPU (cores busy),
    and how many more media viewers it takes (``media_free``: other nodes send WHEP viewers there when full)."""

    viewers: int = 0
    connections: int = 0
    cpu: float = 0.0
    media_free: int = 0


@dataclass(frozen=True, slots=True)
class Relay:
    """A room this node pulls from another node and relays (it is an edge of the room): from which node,
    and its depth in the room's cascade (1: pulled from the origin, 2: from an edge of depth 1, ...)."""

    room: str
    upstream: str
    depth: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as it announces itself: id, public HTTP base URL and websocket URL, load, publishers held,
    rooms relayed."""

    id: str
    http_url: str
    ws_url: str
    load: Load = Load()
    publishers: tuple[str, ...] = ()
    relays: tuple[Relay, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["publishers"] = list(self.publishers)
        data["relays"] = [asdict(relay) for relay in self.relays]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeInfo:
        return cls(data["id"], data["http_url"], data["ws_url"], Load(**data["load"]), tuple(data["publishers"]),
                   tuple(Relay(**relay) for relay in data.get("relays", ())))

    def relay(self, room: str) -> Relay | None:
        """This node's relay of ``room``, if it announces one."""
        return next((relay for relay in self.relays if relay.room == room), None)


class NodeRegistry(Protocol):
    """Every node of a deployment, each alive for ``ttl`` seconds after its last heartbeat."""

    ttl: float

    async def heartbeat(self, node: NodeInfo) -> list[str]:
        """Announce ``node`` (or refresh it) for another TTL, and refresh its claims on ``node.publishers``.

        Returns the rooms among them whose publisher another live node holds (claims refused)."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes, by id."""
        ...

    async def leave(self, node: NodeInfo) -> None:
        """Take ``node`` out at once (a clean shutdown) with its claims, instead of waiting for its TTL."""
        ...

    async def claim(self, room: str, node_id: str) -> str:
        """Record that ``node_id`` holds ``room``'s publisher, for one TTL (heartbeats refresh it).

        Returns the node that holds it after the call: ``node_id``, or another live node that
        claimed it first (then nothing is changed)."""
        ...

    async def release(self, room: str, node_id: str) -> bool:
        """Drop ``node_id``'s claim on ``room``; False if it held none."""
        ...

    async def publisher_node(self, room: str) -> str | None:
        """The live node that holds ``room``'s publisher, or None."""
        ...
