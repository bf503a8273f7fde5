"""Rooms: the unit everything else hangs off (media, events, commerce).

A room has an id (used in URLs and tokens), a title and a stream key, the publisher's
WHIP bearer secret. The embedded default keeps rooms in SQLite so stream keys and links
survive a restart.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from engine.errors import CodedError
from engine.storage import Storage

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rooms (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
    " stream_key TEXT NOT NULL, created_at REAL NOT NULL)"
)

ROOM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class RoomError(CodedError):
    """A room request that cannot be honoured."""


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    title: str
    stream_key: str
    created_at: float

    def public(self) -> dict[str, object]:
        """What anyone may see: never the stream key."""
        return {"id": self.id, "title": self.title, "created_at": self.created_at}


def new_stream_key() -> str:
    return "sk_" + secrets.token_urlsafe(24)


class Rooms:
    """The room directory, cached in memory and written through to SQLite (off the event loop: a
    room exists once its row is committed)."""

    def __init__(self, storage: Storage, max_rooms: int = 10000) -> None:
        self._db = storage.db
        self._max = max_rooms
        self._db.now(lambda conn: conn.execute(_SCHEMA))
        rows = self._db.now(lambda conn: conn.execute("SELECT id, title, stream_key, created_at FROM rooms").fetchall())
        self._rooms: dict[str, Room] = {row[0]: Room(*row) for row in rows}
        self._creating: set[str] = set()  # ids being written, so two creates cannot race

    def get(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    def list(self) -> list[Room]:
        return sorted(self._rooms.values(), key=lambda r: r.created_at)

    async def create(self, room_id: str | None = None, title: str = "") -> Room:
        room_id = room_id or "r" + secrets.token_hex(5)
        if not isinstance(room_id, str) or not ROOM_ID.match(room_id):
            raise RoomError("bad_request", "room id must be 1-64 of a-z, 0-9, '_' or '-'")
        if not isinstance(title, str) or len(title) > 200:
            raise RoomError("bad_request", "title must be a string of at most 200 characters")
        if room_id in self._rooms or room_id in self._creating:
            raise RoomError("conflict", f"room {room_id!r} exists")
        if len(self._rooms) + len(self._creating) >= self._max:
            raise RoomError("limit_reached", "too many rooms")
        room = Room(room_id, title or room_id, new_stream_key(), time.time())
        self._creating.add(room.id)
        try:
            await self._db.write(lambda conn: conn.execute(
                "INSERT INTO rooms (id, title, stream_key, created_at) VALUES (?, ?, ?, ?)",
                (room.id, room.title, room.stream_key, room.created_at),
            ))
        finally:
            self._creating.discard(room.id)
        self._rooms[room.id] = room
        return room

    async def rotate_key(self, room_id: str) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise RoomError("not_found", f"no room {room_id!r}")
        stream_key = new_stream_key()
        await self._db.write(lambda conn: conn.execute(
            "UPDATE rooms SET stream_key = ? WHERE id = ?", (stream_key, room.id)
        ))
        room = self._rooms[room.id] = Room(room.id, room.title, stream_key, room.created_at)
        return room
