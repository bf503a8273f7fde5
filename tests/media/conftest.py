"""Fixtures: a relay on a loopback HTTP server, rooms, a recording bus, encoded streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from media_peers import encode_opus, encode_video

from engine.media.config import MediaConfig
from engine.media.service import MediaService
from signaling.whip import add_media_routes


@dataclass
class Room:
    id: str
    stream_key: str


class Rooms:
    """Just enough of engine.rooms.Rooms: lookup by id."""

    def __init__(self, *rooms: Room) -> None:
        self._rooms = {r.id: r for r in rooms}

    def get(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)


@dataclass
class RecordingBus:
    """Records what the relay publishes, as the bus would deliver it."""

    events: list[tuple[str, str, dict]] = field(default_factory=list)
    state: dict[tuple[str, str], dict] = field(default_factory=dict)

    async def publish(self, room: str, type: str, data: dict) -> Any:
        self.events.append((room, type, data))

    def set_state(self, room: str, key: str, data: dict) -> None:
        self.state[(room, key)] = data

    def types(self, room: str) -> list[str]:
        return [t for r, t, _ in self.events if r == room]


@dataclass
class Relay:
    media: MediaService
    bus: RecordingBus
    base: str
    http: aiohttp.ClientSession


@pytest.fixture(scope="session")
def h264() -> Any:
    return encode_video("h264")


@pytest.fixture(scope="session")
def vp8() -> Any:
    return encode_video("vp8")


@pytest.fixture(scope="session")
def opus() -> Any:
    return encode_opus()


@pytest.fixture
def media_config() -> MediaConfig:
    return MediaConfig(announced_addresses=("127.0.0.1",))


@pytest.fixture
async def relay(media_config: MediaConfig) -> AsyncIterator[Relay]:
    bus = RecordingBus()
    rooms = Rooms(Room("shop", "key-shop"), Room("other", "key-other"))
    media = MediaService(config=media_config, rooms=rooms, bus=bus)
    await media.start()
    app = web.Application()
    add_media_routes(app, media)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Relay(media, bus, str(server.make_url("")).rstrip("/"), http)
    await media.stop()
    await server.close()
