"""The embedded bus: everything in this process, nothing to run beside it.

Sequence numbers start at the room stream's creation time in microseconds, so a client
resuming with a seq from before a restart is recognised as too old and gets a snapshot
instead of someone else's events under the same numbers.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from engine import metrics
from engine.bus.base import Event, RoomListener
from engine.bus.pacing import Ticker
from engine.bus.pending import PendingState, Values


class _RoomStream:
    __slots__ = ("seq", "history", "state", "listeners")

    def __init__(self, history_size: int) -> None:
        self.seq = int(time.time() * 1_000_000)
        self.history: deque[Event] = deque(maxlen=history_size)
        self.state: dict[str, dict[str, Any]] = {}
        self.listeners: list[RoomListener] = []


class MemoryBus:
    """Bus backend for one process (see engine.bus.base.Bus for the contract)."""

    def __init__(self, tick_ms: int = 50, history_size: int = 1024, history_age: float = 300.0,
                 tick_max_ms: int | None = None) -> None:
        self._ticker = Ticker(tick_ms / 1000, (tick_max_ms if tick_max_ms is not None else tick_ms) / 1000,
                              self._flush)
        self._history_size = history_size
        self._history_age = history_age
        self._rooms: dict[str, _RoomStream] = {}
        self._pending = PendingState()

    def _room(self, room: str) -> _RoomStream:
        stream = self._rooms.get(room)
        if stream is None:
            stream = self._rooms[room] = _RoomStream(self._history_size)
        return stream

    def _emit(self, room: str, stream: _RoomStream, type: str, data: dict[str, Any]) -> Event:
        stream.seq += 1
        event = Event(room, stream.seq, type, data)
        stream.history.append(event)
        metrics.EVENTS_PUBLISHED.inc()
        return event

    async def publish(self, room: str, type: str, data: dict[str, Any]) -> Event:
        stream = self._room(room)
        event = self._emit(room, stream, type, data)
        batch = [event, *self._state_events(room, stream, self._pending.take(room))]
        for listener in stream.listeners:
            listener.on_events(batch)
        return event

    def set_state(self, room: str, key: str, type: str, data: dict[str, Any]) -> None:
        stream = self._room(room)
        stream.state[key] = {"type": type, **data}
        self._pending.set(room, key, type, data)

    async def send_direct(self, room: str, user: str, type: str, data: dict[str, Any]) -> None:
        stream = self._rooms.get(room)
        if stream is None:
            return
        message = {**data, "type": type}
        for listener in stream.listeners:
            listener.on_direct(user, message)

    def subscribe(self, room: str, listener: RoomListener) -> None:
        self._room(room).listeners.append(listener)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        stream = self._rooms.get(room)
        if stream is not None and listener in stream.listeners:
            stream.listeners.remove(listener)

    async def ready(self, room: str) -> None:
        """Everything is here already."""

    def health(self) -> dict[str, Any]:
        return {"backend": "memory", "connected": True}

    def seq(self, room: str) -> int:
        return self._room(room).seq

    def state(self, room: str) -> dict[str, dict[str, Any]]:
        stream = self._rooms.get(room)
        return dict(stream.state) if stream else {}

    def history(self, room: str, since: int) -> list[Event] | None:
        stream = self._room(room)
        if since == stream.seq:
            return []
        if since > stream.seq:
            return None
        self._expire(stream)
        history = stream.history
        oldest = history[0].seq if history else stream.seq + 1
        if since + 1 < oldest:
            return None
        return list(history)[since + 1 - oldest :]

    def _expire(self, stream: _RoomStream) -> None:
        cutoff = time.time() - self._history_age
        history = stream.history
        while history and history[0].ts < cutoff:
            history.popleft()

    def _state_events(self, room: str, stream: _RoomStream, values: Values) -> list[Event]:
        """State values taken from the pending ones, as events (one per key), now."""
        return [self._emit(room, stream, type, {"key": key, **data}) for key, (type, data) in values.items()]

    def flush_state(self) -> None:
        """Emit every pending state value as one event per key (called at each tick)."""
        for room, values in self._pending.take_all().items():
            stream = self._rooms[room]
            batch = self._state_events(room, stream, values)
            for listener in stream.listeners:
                listener.on_events(batch)

    async def _flush(self) -> None:
        self.flush_state()

    @property
    def tick(self) -> float:
        """The current coalescing interval in seconds (stretched while the loop is loaded)."""
        return self._ticker.interval

    async def start(self) -> None:
        self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()
