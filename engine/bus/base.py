"""The event bus interface: per-room ordered events, coalesced state and direct messages.

Callers (websocket handlers, the commerce edge, the media relay) only see this protocol,
so the memory backend (one process) and a Redis backend (many nodes) are interchangeable
(DESIGN.md principle 2). An event is encoded once when it is published and the same
bytes go to every viewer: fan-out cost must not grow with the size of the payload.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgpack
import orjson


class Event:
    """One room event with its place in the room's order (``seq``).

    ``json`` is the wire form, built once; ``packed`` (msgpack) is built on first use
    because only clients that negotiated msgpack need it.
    """

    __slots__ = ("room", "seq", "type", "data", "ts", "json", "_packed")

    def __init__(self, room: str, seq: int, type: str, data: dict[str, Any], ts: float | None = None) -> None:
        self.room = room
        self.seq = seq
        self.type = type
        self.data = data
        self.ts = time.time() if ts is None else ts
        self.json = orjson.dumps(self.wire())
        self._packed: bytes | None = None

    def wire(self) -> dict[str, Any]:
        """The object clients receive: data fields plus type, seq and the publish time (ms)."""
        return {**self.data, "type": self.type, "seq": self.seq, "ts": round(self.ts * 1000, 3)}

    @property
    def packed(self) -> bytes:
        if self._packed is None:
            self._packed = msgpack.packb(self.wire())
        return self._packed

    def __repr__(self) -> str:
        return f"Event({self.room!r}, {self.seq}, {self.type!r})"


class RoomListener(Protocol):
    """What a node's room hub implements to receive a room's traffic from the bus."""

    def on_events(self, events: list[Event]) -> None:
        """Room events, in seq order, never a gap within one call or between calls."""

    def on_direct(self, user: str, message: dict[str, Any]) -> None:
        """A message for every connection of one user in the room (cart updates)."""

    def on_reset(self) -> None:
        """Events were lost beyond what history can replay (a shared backend was unreachable or
        lost its data): the bus's seq, state and history are the room's anew, and every client
        needs a snapshot. Later events follow the new seq."""


class Bus(Protocol):
    """Per-room event streams. Every method is safe to call from the event loop thread."""

    async def publish(self, room: str, type: str, data: dict[str, Any]) -> Event:
        """A discrete event: delivered individually and in order, kept in history.

        State values set since the room's last tick go out with it, as events right after it in
        the same batch: every viewer gets them in the one write the discrete event costs anyway,
        instead of a second write to everyone at the tick (a sale's start and its counter, a sell-out
        and the zero)."""

    def set_state(self, room: str, key: str, type: str, data: dict[str, Any]) -> None:
        """A state value (latest wins), emitted as an event at the room's next tick, or with the
        room's next discrete event if that comes first."""

    async def send_direct(self, room: str, user: str, type: str, data: dict[str, Any]) -> None:
        """A message for one user's connections only; not part of the room's order, kept in no
        history. This node's connections have it on return; a shared backend sends other nodes'
        copy without waiting for it (a copy it cannot send is lost, not raised)."""

    def subscribe(self, room: str, listener: RoomListener) -> None:
        """Start handing the room's traffic to ``listener``; the reads below answer for the room
        once ``ready`` has returned (while any listener stays subscribed)."""

    def unsubscribe(self, room: str, listener: RoomListener) -> None: ...

    async def ready(self, room: str) -> None:
        """Wait until a subscribed room's seq, state and history can be read here. A shared
        backend loads them from its store; raises ``unavailable`` (CodedError) if it cannot now."""

    def seq(self, room: str) -> int:
        """The seq of the room's latest event (what a snapshot taken now reflects)."""

    def state(self, room: str) -> dict[str, dict[str, Any]]:
        """Current state values by key, each ``{"type": ..., **data}``, for snapshots."""

    def history(self, room: str, since: int) -> list[Event] | None:
        """Events after ``since``, or None when the gap is older than the kept history."""

    @property
    def tick(self) -> float:
        """The state tick's current interval, seconds: between --tick-ms and --tick-max-ms
        (engine.bus.pacing), the same pace on every backend."""

    def health(self) -> dict[str, Any]:
        """For /healthz: the backend and whether it is reachable (``connected``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
