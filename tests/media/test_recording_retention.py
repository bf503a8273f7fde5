"""Retention by total size (the oldest finished recordings go first) and by age (counted from a
recording's end), the one in progress never. Ages are made by moving a finished recording's start
back in its kept metadata, as if it had been made hours ago: no test waits hours."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from media_peers import broadcast
from test_recording_failures import engine_config, listing, running, wait_for
from test_recording_http import stop

from engine.app import App


def size_on_disk(engine: App, recording: dict[str, Any]) -> int:
    folder = engine.config.recordings_path / "demo" / recording["id"]
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


async def record(engine: App, http: aiohttp.ClientSession, h264: Any, opus: Any, seconds: float) -> None:
    publisher = await broadcast(engine, http, h264, opus)
    await asyncio.sleep(seconds)
    await stop(engine, http, publisher)


async def started(engine: App, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    """The listing once the new broadcast's recording is in it and the sweep its start runs is done."""
    async def check() -> list[dict[str, Any]]:
        found = await listing(http, engine)
        return found if engine.recordings.recording("demo") and any(
            r["id"] == engine.recordings.recording("demo") for r in found) else []

    await wait_for(check)
    await asyncio.sleep(0.3)
    return await listing(http, engine)


async def test_retention_deletes_oldest_finished_first(tmp_path: Path, h264, opus) -> None:
    async with running(engine_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        for _ in range(3):
            await record(engine, http, h264, opus, 1.0)
        newest, middle, oldest = await listing(http, engine)
        assert [r["state"] for r in (newest, middle, oldest)] == ["complete"] * 3
        sizes = {r["id"]: size_on_disk(engine, r) for r in (newest, middle, oldest)}
    margin = 5000  # more than a recording holds when it starts (init segment and state), less than any finished
    assert all(size > 2 * margin for size in sizes.values()), sizes

    # room for the newest finished recording and a starting one: the two oldest go, in that order
    bounded = engine_config(tmp_path, recordings_max_bytes=sizes[newest["id"]] + margin)
    async with running(bounded) as engine, aiohttp.ClientSession() as http:
        publisher = await broadcast(engine, http, h264, opus)
        kept = await started(engine, http)
        live = engine.recordings.recording("demo")
        assert [r["id"] for r in kept] == [live, newest["id"]], (kept, sizes)
        assert kept[0]["state"] == "recording"
        await stop(engine, http, publisher)

    # a bound no recording fits in: every finished one goes, the one in progress stays and goes on
    async with running(engine_config(tmp_path, recordings_max_bytes=1)) as engine, aiohttp.ClientSession() as http:
        publisher = await broadcast(engine, http, h264, opus)
        [only] = await started(engine, http)
        assert only["id"] == engine.recordings.recording("demo") and only["state"] == "recording"
        await asyncio.sleep(2.5)  # a segment is cut: it grows past the bound while in progress
        [only] = await listing(http, engine)
        assert only["state"] == "recording" and only["bytes"] > 1
        await stop(engine, http, publisher)
        await wait_for(lambda: asyncio.sleep(0, not (engine.config.recordings_path / "demo" / only["id"]).exists()))
        assert await listing(http, engine) == []  # finished, it is past the bound too


def age(engine: App, recording: dict[str, Any], ended_seconds_ago: float) -> None:
    """Rewrite a finished recording's metadata as if it had ended ``ended_seconds_ago``."""
    meta = engine.config.recordings_path / "demo" / recording["id"] / "recording.json"
    info = json.loads(meta.read_text())
    info["started_at"] = time.time() - ended_seconds_ago - info["duration"]
    meta.write_text(json.dumps(info))


async def test_retention_deletes_recordings_past_their_age(tmp_path: Path, h264, opus) -> None:
    async with running(engine_config(tmp_path, recordings_max_bytes=0)) as engine, aiohttp.ClientSession() as http:
        for _ in range(3):
            await record(engine, http, h264, opus, 1.0)
        newest, middle, oldest = await listing(http, engine)
        age(engine, oldest, 3 * 3600)
        age(engine, middle, 2 * 3600)
        age(engine, newest, 1800)

    # a server started after the bound passed: the sweep at its start deletes what is too old
    hours = engine_config(tmp_path, recordings_max_bytes=0, recordings_max_age=2.5 * 3600)
    async with running(hours) as engine, aiohttp.ClientSession() as http:
        async def swept() -> list[dict[str, Any]]:
            found = await listing(http, engine)
            return found if len(found) == 2 else []

        assert [r["id"] for r in await wait_for(swept)] == [newest["id"], middle["id"]]

        # while serving: the sweep a new broadcast runs deletes what has aged past the bound since
        age(engine, newest, 3 * 3600)
        publisher = await broadcast(engine, http, h264, opus)
        kept = await started(engine, http)
        live = engine.recordings.recording("demo")
        assert [r["id"] for r in kept] == [live, middle["id"]]
        await stop(engine, http, publisher)
        assert [r["id"] for r in await listing(http, engine)] == [live, middle["id"]]  # just ended: young


async def test_listings_read_the_disk_once_per_change(tmp_path: Path, h264, opus) -> None:
    """The lobby's poll and a room's listing (an offline room's viewers poll it) read the catalog
    this node keeps between changes, not the disk; a sweep that deletes nothing is no change (the
    shared index is not rewritten), one that deletes is."""
    limits = engine_config(tmp_path, recordings_max_bytes=0, recordings_max_age=3600)
    async with running(limits) as engine, aiohttp.ClientSession() as http:
        for _ in range(2):
            await record(engine, http, h264, opus, 1.0)
        newest, oldest = await listing(http, engine)
        await asyncio.sleep(0.5)  # the sweep the last end runs is over
        changes: list[int] = []
        engine.recordings.on_change = lambda: changes.append(1)

        async def lobby() -> list[str]:
            response = await http.get(f"http://127.0.0.1:{engine.http_port}/api/recordings")
            assert response.status == 200
            return [r["id"] for r in (await response.json())["recordings"]]

        async def room() -> list[str]:
            return [r["id"] for r in await listing(http, engine)]

        assert await lobby() == [newest["id"], oldest["id"]]
        assert await room() == [newest["id"], oldest["id"]]
        folder = engine.config.recordings_path
        folder.rename(folder.with_name("moved"))  # a poll that walked the disk would find nothing
        try:
            assert await lobby() == [newest["id"], oldest["id"]]
            assert await room() == [newest["id"], oldest["id"]]
        finally:
            folder.with_name("moved").rename(folder)

        await engine.recordings.sweep()  # nothing past the bounds
        assert changes == []
        age(engine, oldest, 2 * 3600)
        await engine.recordings.sweep()
        assert changes == [1]
        assert await lobby() == [newest["id"]]
        assert await room() == [newest["id"]]
