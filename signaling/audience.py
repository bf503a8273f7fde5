"""How many people watch a room, whatever path they watch by, each counted once.

A viewer reaches a room by a websocket (events, chat, cart), by a media session
(WHEP, or an offer over the websocket), or by both: the watch page opens a
websocket and a WHEP session; a third-party WHEP player opens only a media
session. A media session whose request carried a verified token knows its
user id (``sub``). Per user id the count is the larger of its websocket viewer
connections and its media sessions (a page with both counts once, two tabs
count twice); media sessions without a user id count one each.

The count is kept incrementally (one user's change at a time), so a join or a
leave costs the same in a room of ten or of ten thousand, and every change
sets the room's ``viewers`` state value, which the bus coalesces per tick.

Nodes sharing a Redis (``--redis-url``) show the room's viewers on all of them:
each change of this node's count goes to the shared tally instead
(signaling.audience_redis), which sums every node's counts and sets the state
value from one node per room.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

PATHS = ("ws", "media")


class _RoomAudience:
    """One room's tallies: per user id and path, and media sessions of no known user."""

    __slots__ = ("anonymous", "count", "users")

    def __init__(self) -> None:
        self.users: dict[str, list[int]] = {}  # sub -> [websocket viewers, media sessions]
        self.anonymous = 0
        self.count = 0


class SharedTally(Protocol):
    """Where nodes sharing a Redis add up their counts (signaling.audience_redis.SharedViewers)."""

    def changed(self, room: str, count: int) -> None: ...
    def total(self, room: str) -> int: ...


class Audience:
    """Every room's viewer count on this node; ``on_change(room, count)`` after each change, or
    with a shared tally (``share``), the tally is told instead."""

    def __init__(self, on_change: Callable[[str, int], None]) -> None:
        self._rooms: dict[str, _RoomAudience] = {}
        self._on_change = on_change
        self._shared: SharedTally | None = None

    def share(self, tally: SharedTally) -> None:
        """Count the room over every node sharing ``tally`` (set before any viewer comes)."""
        self._shared = tally

    def count(self, room: str) -> int:
        """The room's viewers as clients are shown them: on every node when shared, else on this one."""
        if self._shared is not None:
            return self._shared.total(room)
        return self.local(room)

    def local(self, room: str) -> int:
        """The room's viewers on this node (its load in the node registry)."""
        audience = self._rooms.get(room)
        return audience.count if audience else 0

    def joined(self, room: str, path: str, sub: str | None) -> None:
        self._change(room, path, sub, 1)

    def left(self, room: str, path: str, sub: str | None) -> None:
        self._change(room, path, sub, -1)

    def _change(self, room: str, path: str, sub: str | None, delta: int) -> None:
        audience = self._rooms.get(room)
        if audience is None:
            audience = self._rooms[room] = _RoomAudience()
        if sub is None:
            if path != "media":
                raise ValueError("a websocket viewer always has a user id")
            audience.anonymous += delta
            audience.count += delta
        else:
            tally = audience.users.get(sub)
            if tally is None:
                tally = audience.users[sub] = [0, 0]
            before = max(tally)
            tally[PATHS.index(path)] += delta
            audience.count += max(tally) - before
            if tally == [0, 0]:
                del audience.users[sub]
        count = audience.count
        if not audience.users and not audience.anonymous:
            del self._rooms[room]
        if self._shared is not None:
            self._shared.changed(room, count)
        else:
            self._on_change(room, count)
