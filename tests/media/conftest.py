"""Fixtures: a relay on a loopback HTTP server, rooms, a recording bus, encoded streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cascade_nodes import MediaNode, stop_nodes
from media_peers import encode_opus, encode_video

from engine.bus.base import Event
from engine.bus.memory import MemoryBus
from engine.media.config import FORWARDING, MediaConfig
from engine.media.service import MediaService
from engine.rooms import Rooms
from engine.storage import Storage
from signaling.whip import add_media_routes


class BusRecorder:
    """A bus listener keeping every event one room emitted (discrete and state)."""

    def __init__(self, bus: MemoryBus, room: str) -> None:
        self.events: list[Event] = []
        bus.subscribe(room, self)

    def on_events(self, events: list[Event]) -> None:
        self.events.extend(events)

    def on_direct(self, user: str, message: dict[str, Any]) -> None:
        """Direct messages are not media events."""

    def types(self) -> list[str]:
        return [e.type for e in self.events]


@dataclass
class Relay:
    media: MediaService
    bus: MemoryBus
    events: BusRecorder
    rooms: Rooms
    base: str
    http: aiohttp.ClientSession

    def key(self, room: str) -> str:
        return self.rooms.get(room).stream_key


@pytest.fixture(scope="session")
def h264() -> Any:
    return encode_video("h264")


@pytest.fixture(scope="session")
def h264_gop30() -> Any:
    """Four seconds of video with a keyframe every second (the LL-HLS tests' 1 s segments)."""
    return encode_video("h264", frames=120, gop=30)


@pytest.fixture(scope="session")
def vp8() -> Any:
    return encode_video("vp8")


@pytest.fixture(scope="session")
def opus() -> Any:
    return encode_opus()


@pytest.fixture(params=FORWARDING)
def forwarding(request: pytest.FixtureRequest) -> str:
    """Every relay test runs on both forwarding paths (``-k fast`` or ``-k stock`` picks one)."""
    return request.param


@pytest.fixture
def media_config(forwarding: str) -> MediaConfig:
    return MediaConfig(announced_addresses=("127.0.0.1",), forwarding=forwarding)


@contextlib.asynccontextmanager
async def relay_for(media_config: MediaConfig, tmp_path: Path) -> AsyncIterator[Relay]:
    """A relay with ``media_config`` on a loopback HTTP server, rooms "shop" and "other"."""
    bus = MemoryBus(tick_ms=20)
    await bus.start()
    storage = Storage(tmp_path)
    rooms = Rooms(storage)
    await rooms.create("shop")
    await rooms.create("other")
    media = MediaService(config=media_config, rooms=rooms, bus=bus)
    await media.start()
    app = web.Application()
    add_media_routes(app, media)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield Relay(media, bus, BusRecorder(bus, "shop"), rooms, str(server.make_url("")).rstrip("/"), http)
    finally:
        await media.stop()
        await server.close()
        await bus.stop()
        storage.close()


@pytest.fixture
async def relay(media_config: MediaConfig, tmp_path: Path) -> AsyncIterator[Relay]:
    async with relay_for(media_config, tmp_path) as relay:
        yield relay


@pytest.fixture(scope="session")
def h264_large() -> Any:
    return encode_video("h264", size=(480, 360))


# The cascade tests' fixtures: the `livecart serve` nodes a test started, stopped after it; one HTTP
# session.


@pytest.fixture
def nodes() -> Iterator[list[MediaNode]]:
    started: list[MediaNode] = []
    yield started
    stop_nodes(started)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
