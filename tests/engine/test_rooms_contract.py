"""Rooms contract: the room directory behaves the same kept in SQLite (one process) and on Redis
(nodes sharing it); on Redis a second directory also learns the first one's rooms as they change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from engine.rooms import RoomError, Rooms, SqliteRoomDirectory
from engine.rooms_redis import RedisRoomDirectory
from engine.storage import Storage
from tests.conftest import RedisTarget

Opener = Callable[[], contextlib.AbstractAsyncContextManager[Rooms]]


@pytest.fixture(params=["sqlite", "redis"])
async def open_rooms(request: pytest.FixtureRequest, tmp_path: Path,
                     redis_target: RedisTarget) -> AsyncIterator[Opener]:
    """Opens Rooms on the test's one directory (each opening is like a process start)."""
    client = Redis.from_url(redis_target.url)

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Rooms]:
        storage = Storage(tmp_path / "data") if request.param == "sqlite" else None
        directory = (SqliteRoomDirectory(storage) if storage is not None
                     else RedisRoomDirectory(client, redis_target.url, redis_target.prefix))
        rooms = Rooms(directory, max_rooms=3)
        await rooms.start()
        try:
            yield rooms
        finally:
            await rooms.stop()
            if storage is not None:
                storage.close()

    yield opened
    await client.aclose()


async def refused(call: Any, code: str) -> None:
    with pytest.raises(RoomError) as err:
        await call
    assert err.value.code == code


async def test_rooms_are_created_changed_and_kept(open_rooms: Opener) -> None:
    async with open_rooms() as rooms:
        assert rooms.list() == [] and rooms.get("spring") is None
        spring = await rooms.create("spring", "Spring")
        anonymous = await rooms.create(private=True)
        assert rooms.get("spring") == spring and spring.stream_key.startswith("sk_")
        assert [r.id for r in rooms.list()] == ["spring", anonymous.id]
        await refused(rooms.create("spring"), "conflict")
        await refused(rooms.create("Bad Id"), "bad_request")
        await refused(rooms.create("x", title=5), "bad_request")
        await refused(rooms.create("x", record=None), "bad_request")
        rotated = await rooms.rotate_key("spring")
        assert rotated.stream_key != spring.stream_key and rooms.get("spring") == rotated
        updated = await rooms.update("spring", title="Spring drop", private=True)
        assert (updated.title, updated.private, updated.stream_key) == ("Spring drop", True, rotated.stream_key)
        assert updated.record and not (await rooms.update("spring", record=False)).record
        assert not updated.hls_only and (await rooms.update("spring", hls_only=True)).hls_only
        updated = await rooms.update("spring", title="Spring drop")  # other settings stay as they are
        assert (updated.private, updated.record, updated.hls_only) == (True, False, True)
        await refused(rooms.update("spring", record="no"), "bad_request")
        await refused(rooms.update("spring", hls_only=1), "bad_request")
        await refused(rooms.create("x", hls_only="yes"), "bad_request")
        unrecorded = await rooms.create("unrecorded", record=False, hls_only=True)
        await refused(rooms.rotate_key("nope"), "not_found")
        await refused(rooms.update("nope", title="x"), "not_found")
        await refused(rooms.create("fourth"), "limit_reached")
    async with open_rooms() as again:  # a restart: everything as last written
        assert again.get("spring") == updated
        assert again.get("unrecorded") == unrecorded and not unrecorded.record and unrecorded.hls_only
        assert [r.id for r in again.list()] == ["spring", anonymous.id, "unrecorded"]


def test_a_data_directory_from_before_room_settings_gains_them(tmp_path: Path) -> None:
    """Rooms kept by a version without ``private``, ``record`` and ``hls_only`` columns: public, recorded
    and played over WebRTC."""
    storage = Storage(tmp_path / "data")
    storage.db.now(lambda conn: conn.execute(
        "CREATE TABLE rooms (id TEXT PRIMARY KEY, title TEXT NOT NULL, stream_key TEXT NOT NULL,"
        " created_at REAL NOT NULL)"))
    storage.db.now(lambda conn: conn.execute("INSERT INTO rooms VALUES ('old', 'Old', 'sk_old', 1.0)"))
    try:
        [old] = Rooms(SqliteRoomDirectory(storage)).list()
        assert (old.id, old.stream_key, old.private, old.record, old.hls_only) == ("old", "sk_old", False, True, False)
    finally:
        storage.close()


async def test_shared_rooms_reach_every_node(redis_target: RedisTarget) -> None:
    client = Redis.from_url(redis_target.url)
    a = Rooms(RedisRoomDirectory(client, redis_target.url, redis_target.prefix))
    b = Rooms(RedisRoomDirectory(client, redis_target.url, redis_target.prefix))
    await a.start()
    await b.start()
    try:
        created = await a.create("spring")
        async with asyncio.timeout(5):
            while b.get("spring") != created:
                await asyncio.sleep(0.01)
        await refused(b.create("spring"), "conflict")
        rotated = await b.rotate_key("spring")
        async with asyncio.timeout(5):
            while a.get("spring") != rotated:
                await asyncio.sleep(0.01)
    finally:
        await a.stop()
        await b.stop()
        await client.aclose()
