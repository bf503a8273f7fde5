"""Rooms: the unit everything else hangs off (media, events, commerce).

A room has an id (used in URLs and tokens), a title, a stream key (the publisher's WHIP
bearer secret), whether it is private (its media is for holders of a viewer or host token the
shop issued, not for anyone with the URL or a guest token) and whether its broadcasts are
recorded (on by default; a host may turn it off for a show that must not be kept, and the
setting is read when a broadcast starts) and whether it is HLS-only (its viewers play the live
HLS and WHEP refuses them: for a show with more viewers than WebRTC should carry). The embedded
default keeps rooms in SQLite so stream keys and links survive a restart; nodes sharing a Redis
keep them there (engine.rooms_redis), so every node knows every room and its stream key.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from engine.errors import CodedError, shown
from engine.storage import Storage

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rooms (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
    " stream_key TEXT NOT NULL, created_at REAL NOT NULL, private INTEGER NOT NULL DEFAULT 0,"
    " record INTEGER NOT NULL DEFAULT 1, hls_only INTEGER NOT NULL DEFAULT 0)"
)
# Columns added since the first schema, with their definitions (an older data directory gains them).
_ADDED_COLUMNS = {"private": "INTEGER NOT NULL DEFAULT 0", "record": "INTEGER NOT NULL DEFAULT 1",
                  "hls_only": "INTEGER NOT NULL DEFAULT 0"}

ROOM_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class RoomError(CodedError):
    """A room request that cannot be honoured."""


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    title: str
    stream_key: str
    created_at: float
    private: bool = False
    record: bool = True
    hls_only: bool = False

    def public(self) -> dict[str, object]:
        """What anyone may see: never the stream key."""
        return {"id": self.id, "title": self.title, "created_at": self.created_at, "private": self.private,
                "record": self.record, "hls_only": self.hls_only}


def new_stream_key() -> str:
    return "sk_" + secrets.token_urlsafe(24)


class RoomDirectory(Protocol):
    """Where rooms are kept: SQLite for one process (SqliteRoomDirectory), Redis for nodes sharing
    rooms (engine.rooms_redis). Rooms keeps a cache of it, because ``Rooms.get`` is synchronous
    and on every hot path (tokens, taps, media)."""

    def load(self) -> list[Room]:
        """Every room, read once before serving."""
        ...

    async def insert(self, room: Room) -> bool:
        """Keep a new room; False if its id is taken (by another node)."""
        ...

    async def save(self, room: Room) -> None:
        """Keep a changed room (stream key, title, privacy, recording, HLS only)."""
        ...

    async def follow(self, learn: Callable[[Room], None], reload: Callable[[list[Room]], None]) -> None:
        """Start telling the cache about rooms other nodes create or change."""
        ...

    async def stop(self) -> None: ...


class SqliteRoomDirectory:
    """Rooms in the data directory's database, for a process alone (nothing to follow)."""

    def __init__(self, storage: Storage) -> None:
        self._db = storage.db
        self._db.now(lambda conn: conn.execute(_SCHEMA))
        columns = {row[1] for row in self._db.now(lambda conn: conn.execute("PRAGMA table_info(rooms)").fetchall())}
        for column, definition in _ADDED_COLUMNS.items():
            if column not in columns:  # a data directory from before the setting
                statement = f"ALTER TABLE rooms ADD COLUMN {column} {definition}"
                self._db.now(lambda conn, statement=statement: conn.execute(statement))

    def load(self) -> list[Room]:
        rows = self._db.now(lambda conn: conn.execute(
            "SELECT id, title, stream_key, created_at, private, record, hls_only FROM rooms").fetchall())
        return [Room(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]), bool(row[6])) for row in rows]

    async def insert(self, room: Room) -> bool:
        return await self._db.write(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO rooms (id, title, stream_key, created_at, private, record, hls_only)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (room.id, room.title, room.stream_key, room.created_at, int(room.private), int(room.record),
             int(room.hls_only)),
        ).rowcount == 1)

    async def save(self, room: Room) -> None:
        await self._db.write(lambda conn: conn.execute(
            "UPDATE rooms SET title = ?, stream_key = ?, private = ?, record = ?, hls_only = ? WHERE id = ?",
            (room.title, room.stream_key, int(room.private), int(room.record), int(room.hls_only), room.id),
        ))

    async def follow(self, learn: Callable[[Room], None], reload: Callable[[list[Room]], None]) -> None:
        return None

    async def stop(self) -> None:
        return None


class Rooms:
    """The room directory, cached in memory and written through to its RoomDirectory (off the event
    loop: a room exists once it is kept there). With a shared directory the cache also learns the
    rooms other nodes create or change (``start()``)."""

    def __init__(self, directory: RoomDirectory | Storage, max_rooms: int = 10000) -> None:
        self._directory: RoomDirectory = (
            SqliteRoomDirectory(directory) if isinstance(directory, Storage) else directory)
        self._max = max_rooms
        self._rooms: dict[str, Room] = {room.id: room for room in self._directory.load()}
        self._creating: set[str] = set()  # ids being written, so two creates cannot race

    async def start(self) -> None:
        await self._directory.follow(self._learn, self._reload)

    async def stop(self) -> None:
        await self._directory.stop()

    def _learn(self, room: Room) -> None:
        self._rooms[room.id] = room

    def _reload(self, rooms: list[Room]) -> None:
        self._rooms = {room.id: room for room in rooms}

    def get(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    def list(self) -> list[Room]:
        return sorted(self._rooms.values(), key=lambda r: r.created_at)

    async def create(self, room_id: str | None = None, title: str = "", private: bool = False,
                     record: bool = True, hls_only: bool = False) -> Room:
        room_id = room_id or "r" + secrets.token_hex(5)
        if not isinstance(room_id, str) or not ROOM_ID.fullmatch(room_id):
            raise RoomError("bad_request", "room id must be 1-64 of a-z, 0-9, '_' or '-'")
        _check_settings(title, private, record, hls_only)
        if room_id in self._rooms or room_id in self._creating:
            raise RoomError("conflict", f"room {room_id!r} exists")
        if len(self._rooms) + len(self._creating) >= self._max:
            raise RoomError("limit_reached", "too many rooms")
        room = Room(room_id, title or room_id, new_stream_key(), time.time(), private, record, hls_only)
        self._creating.add(room.id)
        try:
            if not await self._directory.insert(room):
                raise RoomError("conflict", f"room {room_id!r} exists")
        finally:
            self._creating.discard(room.id)
        self._rooms[room.id] = room
        return room

    async def rotate_key(self, room_id: str) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise RoomError("not_found", f"no room {shown(room_id)}")
        room = replace(room, stream_key=new_stream_key())
        await self._directory.save(room)
        self._rooms[room.id] = room
        return room

    async def update(self, room_id: str, title: str | None = None, private: bool | None = None,
                     record: bool | None = None, hls_only: bool | None = None) -> Room:
        """Change a room's title, privacy, recording or HLS only; None leaves a setting as it is."""
        room = self._rooms.get(room_id)
        if room is None:
            raise RoomError("not_found", f"no room {shown(room_id)}")
        private = room.private if private is None else private
        record = room.record if record is None else record
        hls_only = room.hls_only if hls_only is None else hls_only
        _check_settings(room.title if title is None else title, private, record, hls_only)
        room = replace(room, title=title or room.title, private=private, record=record, hls_only=hls_only)
        await self._directory.save(room)
        self._rooms[room.id] = room
        return room


def _check_settings(title: object, private: object, record: object, hls_only: object) -> None:
    if not isinstance(title, str) or len(title) > 200:
        raise RoomError("bad_request", "title must be a string of at most 200 characters")
    if not isinstance(private, bool):
        raise RoomError("bad_request", "private must be true or false")
    if not isinstance(record, bool):
        raise RoomError("bad_request", "record must be true or false")
    if not isinstance(hls_only, bool):
        raise RoomError("bad_request", "hls_only must be true or false")
