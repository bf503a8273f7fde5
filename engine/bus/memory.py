"""The embedded bus: everything in this process, nothing to run beside it.

Sequence numbers start at the room stream's creation time in microseconds, so a client
resuming with a seq from before a restart is recognised as too old and gets a snapshot
instead of someone else's events under the same numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from engine import metrics
from engine.bus.base import Event, RoomListener
from engine.bus.pacing import TickPacer


class _RoomStream:
    __slots__ = ("seq", "history", "state", "dirty", "listeners")

    def __init__(self, history_size: int) -> None:
        self.seq = int(time.time() * 1_000_000)
        self.history: deque[Event] = deque(maxlen=history_size)
        self.state: dict[str, dict[str, Any]] = {}
        self.dirty: dict[str, tuple[str, dict[str, Any]]] = {}
        self.listeners: list[RoomListener] = []


class MemoryBus:
    """Bus backend for one process (see engine.bus.base.Bus for the contract)."""

    def __init__(self, tick_ms: int = 50, history_size: int = 1024, history_age: float = 300.0,
                 tick_max_ms: int | None = None) -> None:
        self._tick = TickPacer(tick_ms / 1000, (tick_max_ms if tick_max_ms is not None else tick_ms) / 1000)
        self._history_size = history_size
        self._history_age = history_age
        self._rooms: dict[str, _RoomStream] = {}
        self._ticker: asyncio.Task[None] | None = None

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
        batch = [event, *self._pending_state(room, stream)]
        for listener in stream.listeners:
            listener.on_events(batch)
        return event

    def set_state(self, room: str, key: str, type: str, data: dict[str, Any]) -> None:
        stream = self._room(room)
        stream.state[key] = {"type": type, **data}
        stream.dirty[key] = (type, data)

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

    def _pending_state(self, room: str, stream: _RoomStream) -> list[Event]:
        """The room's state values set since they last went out, as events (one per key), now."""
        if not stream.dirty:
            return []
        dirty, stream.dirty = stream.dirty, {}
        return [self._emit(room, stream, type, {"key": key, **data}) for key, (type, data) in dirty.items()]

    def flush_state(self) -> None:
        """Emit every dirty state value as one event per key (called at each tick)."""
        for room, stream in self._rooms.items():
            batch = self._pending_state(room, stream)
            if not batch:
                continue
            for listener in stream.listeners:
                listener.on_events(batch)

    @property
    def tick(self) -> float:
        """The current coalescing interval in seconds (stretched while the loop is loaded)."""
        return self._tick.interval

    async def _run_ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            interval = self._tick.interval
            due = loop.time() + interval
            await asyncio.sleep(interval)
            self._tick.woke(loop.time() - due)
            self.flush_state()

    async def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._run_ticker())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
