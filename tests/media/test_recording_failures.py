"""A recording that cannot be written fails alone: the live stream goes on, the room is told.

The engine runs for real (WHIP publisher, WHEP viewer, websocket viewer, REST); the failures
are made on the file system under the running recorder, in ways that work as root: a directory
where the next segment file goes (the write fails), the room's recordings directory replaced
by a file (every write fails, the recording's state cannot be stored either), and a FIFO where
the next segment file goes (the writer thread blocks in ``open``, as on a hung disk, and its
bounded queue overflows).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from media_peers import Viewer, broadcast

from engine.app import App
from engine.config import Config
from tests.conftest import connect, running, token

FIRST_SEGMENT = "seg-000001.m4s"  # cut at the second keyframe (2 s in): the sabotage comes before it


def engine_config(tmp_path: Path, **changes: Any) -> Config:
    return Config(host="127.0.0.1", http_port=0, ws_port=0, data_dir=str(tmp_path / "data"),
                  secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20, demo_catalog=False,
                  announce="127.0.0.1", recording_rejoin=0.5, **changes)




async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 8.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def listing(http: aiohttp.ClientSession, engine: App) -> list[dict[str, Any]]:
    response = await http.get(f"http://127.0.0.1:{engine.http_port}/api/rooms/demo/recordings")
    assert response.status == 200
    return (await response.json())["recordings"]


async def frames_keep_coming(viewer: Viewer) -> None:
    """The WHEP viewer receives new video frames now (after the recording failed)."""
    before = viewer.log.count("video")
    await wait_for(lambda: asyncio.sleep(0, viewer.log.count("video") >= before + 10), timeout=5.0)


def segment_is_a_directory(recording: Path) -> Callable[[], None]:
    (recording / FIRST_SEGMENT).mkdir()
    return lambda: None


def room_directory_is_a_file(recording: Path) -> Callable[[], None]:
    room = recording.parent
    room.rename(room.with_name("moved-away"))
    room.write_text("not a directory")
    return lambda: None


def segment_blocks(recording: Path) -> Callable[[], None]:
    """A FIFO where the first segment goes: the writer thread blocks opening it until it is read."""
    fifo = recording / FIRST_SEGMENT
    os.mkfifo(fifo)

    def release() -> None:
        with open(fifo, "rb") as reader:
            reader.read()

    return release


@pytest.mark.parametrize(("sabotage", "queue", "reason"), [
    (segment_is_a_directory, 2000, "writing video failed: Is a directory"),
    (room_directory_is_a_file, 2000, "writing video failed: Not a directory"),
    (segment_blocks, 8, "the recording queue is full (8 items)"),
], ids=["segment-unwritable", "directory-replaced", "queue-overflow"])
async def test_failed_recording_leaves_the_stream_live(tmp_path: Path, h264, opus, sabotage, queue: int,
                                                       reason: str) -> None:
    async with running(engine_config(tmp_path, recording_queue=queue)) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        watcher = await connect(engine, token(engine, "demo", "viewer", "v1"))
        publisher = await broadcast(engine, http, h264, opus)
        [recording] = await wait_for(lambda: listing(http, engine))
        assert recording["state"] == "recording"
        release = await asyncio.to_thread(sabotage, engine.config.recordings_path / "demo" / recording["id"])
        viewer = Viewer(kinds=("video",))
        assert (await viewer.whep(http, base, "demo")).status == 201
        try:
            failed = await watcher.recv_type("recording.failed", timeout=8.0)
            assert failed["recording"] == recording["id"] and failed["reason"].startswith(reason), failed
            await frames_keep_coming(viewer)
            [shown] = await listing(http, engine)
            assert shown["id"] == recording["id"] and shown["state"] == "failed", shown
            assert shown["reason"] == failed["reason"]
        finally:
            await asyncio.to_thread(release)
        await frames_keep_coming(viewer)
        await http.delete(base + publisher.location)
        await publisher.close()
        await viewer.close()
        await watcher.close()
        await asyncio.sleep(1.0)  # the rejoin window passes: the failed recording ends
        assert engine.recordings.recording("demo") is None
        # ended, the failed recording stays failed (where its state could be stored at all)
        assert all(r["state"] == "failed" for r in await listing(http, engine))


async def test_recordings_directory_that_cannot_exist(tmp_path: Path, h264, opus) -> None:
    """The recordings directory's parent is a file (as root, the one sure way to refuse a directory)."""
    (tmp_path / "plain-file").write_text("not a directory")
    config = engine_config(tmp_path, recordings_dir=str(tmp_path / "plain-file" / "recordings"))
    async with running(config) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        watcher = await connect(engine, token(engine, "demo", "viewer", "v1"))
        viewer = Viewer(kinds=("video",))
        publisher = await broadcast(engine, http, h264, opus)
        assert (await viewer.whep(http, base, "demo")).status == 201
        failed = await watcher.recv_type("recording.failed", timeout=8.0)
        assert failed["reason"].startswith("cannot create") and "Not a directory" in failed["reason"], failed
        [shown] = await listing(http, engine)
        assert shown["id"] == failed["recording"] and shown["state"] == "failed"
        await frames_keep_coming(viewer)
        await http.delete(base + publisher.location)
        await publisher.close()
        await viewer.close()
        await watcher.close()


async def test_an_ending_recording_is_not_listed_complete_before_it_is_written(tmp_path: Path, h264, opus) -> None:
    """The publisher leaves while the disk holds the writer up: until the recording is written as far
    as it can be, listings say it is still recording (its file on disk says so too, which alone would
    read as a recording whose server stopped mid-way: complete, with what had been flushed)."""
    async with running(engine_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        publisher = await broadcast(engine, http, h264, opus)
        [recording] = await wait_for(lambda: listing(http, engine))
        release = await asyncio.to_thread(segment_blocks, engine.config.recordings_path / "demo" / recording["id"])
        try:
            await asyncio.sleep(3.0)  # past the second keyframe: the writer waits on the first segment's file
            await http.delete(base + publisher.location)
            await publisher.close()
            await wait_for(lambda: asyncio.sleep(0, engine.recordings.recording("demo") is None))
            await asyncio.sleep(0.5)  # the ending writer is still held up
            [shown] = await listing(http, engine)
            assert shown["id"] == recording["id"] and shown["state"] == "recording", shown
        finally:
            await asyncio.to_thread(release)
        # written whole now, as far as it could be: a FIFO takes no seek, so the first segment failed
        done = await wait_for(lambda: _ended(http, engine))
        assert done["id"] == recording["id"] and done["state"] == "failed", done
        assert done["reason"].startswith("writing video failed"), done


async def _ended(http: aiohttp.ClientSession, engine: App) -> dict[str, Any] | None:
    shown = await listing(http, engine)
    return shown[0] if shown and shown[0]["state"] != "recording" else None
