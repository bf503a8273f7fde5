"""A room's fan-out on this node: one bus subscription, many websocket connections.

The costs that matter when a room has 10,000 viewers:
- each event is framed once (server frames are unmasked, so every connection without a
  compression extension gets the very same bytes) and written straight to the transport;
- events that arrive together go out together, one ``write`` per connection per batch;
- connections are written in slices; once a broadcast has held the loop for its time budget
  it yields before the next slice, so one broadcast never holds the loop for long (taps stay
  responsive in a huge room) yet a busy loop does not make a big room wait behind every tap;
- a connection whose kernel buffer is past its limit is skipped ("lagging") instead of
  buffered without bound; once it drains it gets a fresh snapshot, and if it stays
  behind it is closed with a resumable code.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine import metrics
from engine.bus.base import Bus, Event
from engine.tasks import cancel_and_wait

if TYPE_CHECKING:
    from signaling.channel import Session

log = logging.getLogger(__name__)

TEXT, BINARY = 0x81, 0x82  # FIN bit plus opcode


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked RFC 6455 frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", opcode, n) + payload
    if n < 65536:
        return struct.pack("!BBH", opcode, 126, n) + payload
    return struct.pack("!BBQ", opcode, 127, n) + payload


class RoomHub:
    """Implements the bus's RoomListener for one room on this node."""

    def __init__(self, room: str, bus: Bus, fanout_slice: int, fanout_budget: float, max_pending: int,
                 on_viewers: Callable[[str, int], None]) -> None:
        self.room = room
        self.sessions: dict[int, Session] = {}
        self._by_user: dict[str, set[Session]] = {}
        self._bus = bus
        self._slice = fanout_slice
        self._budget = fanout_budget
        self._max_pending = max_pending
        self._on_viewers = on_viewers  # (sub, +1 or -1) per viewer joining or leaving: signaling.audience counts
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"fanout:{room}")
        bus.subscribe(room, self)

    # membership

    def add(self, session: Session) -> None:
        self.sessions[session.conn_id] = session
        self._by_user.setdefault(session.sub, set()).add(session)
        if session.role == "viewer":
            self._on_viewers(session.sub, 1)

    def remove(self, session: Session) -> None:
        if self.sessions.pop(session.conn_id, None) is None:
            return
        peers = self._by_user.get(session.sub)
        if peers is not None:
            peers.discard(session)
            if not peers:
                del self._by_user[session.sub]
        if session.role == "viewer":
            self._on_viewers(session.sub, -1)

    async def close(self) -> None:
        self._bus.unsubscribe(self.room, self)
        await cancel_and_wait(self._task)

    # RoomListener

    def on_events(self, events: list[Event]) -> None:
        self._pending.extend(events)
        if len(self._pending) > self._max_pending:
            # The node cannot keep up with the room: rather than queue without bound,
            # drop the backlog and resync everyone with a snapshot.
            self._resync_everyone()
        self._wake.set()

    def on_direct(self, user: str, message: dict[str, Any]) -> None:
        for session in self._by_user.get(user, ()):
            session.send_now(message)

    def on_reset(self) -> None:
        # Events the clients have not seen are gone for good: resync everyone with a snapshot.
        self._resync_everyone()

    def _resync_everyone(self) -> None:
        self._pending.clear()
        for session in self.sessions.values():
            session.mark_lagging()

    # delivery

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._fanout(batch)
                except Exception:  # a bug here must not silence the room for good
                    log.exception("fan-out failed in room %s", self.room)

    async def _fanout(self, batch: list[Event]) -> None:
        frames = Frames(batch)
        sessions = list(self.sessions.values())
        delivered = 0
        started = time.perf_counter()
        for start in range(0, len(sessions), self._slice):
            if time.perf_counter() - started > self._budget:
                await asyncio.sleep(0)
                started = time.perf_counter()
            for session in sessions[start : start + self._slice]:
                delivered += session.deliver(frames)
        now = time.time()
        for event in batch:
            metrics.DELIVERY_LATENCY.observe(now - event.ts)
        metrics.EVENTS_DELIVERED.inc(delivered)



class Frames:
    """A batch of events framed once per wire encoding, sliceable by seq.

    The whole batch is joined once per encoding, so the common case (a connection that
    is up to date) costs one ``write`` of shared bytes.
    """

    __slots__ = ("events", "first", "last", "_frames", "_joined")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.first = events[0].seq
        self.last = events[-1].seq
        self._frames: dict[bool, list[bytes]] = {}
        self._joined: dict[bool, bytes] = {}

    def after(self, seq: int, packed: bool) -> tuple[bytes, int]:
        """The wire bytes of the events after ``seq`` and how many they are."""
        frames = self._frames.get(packed)
        if frames is None:
            if packed:
                frames = [frame(BINARY, e.packed) for e in self.events]
            else:
                frames = [frame(TEXT, e.json) for e in self.events]
            self._frames[packed] = frames
            self._joined[packed] = b"".join(frames)
        skip = seq + 1 - self.first
        if skip <= 0:
            return self._joined[packed], len(frames)
        return b"".join(frames[skip:]), len(frames) - skip
