"""Shared fixtures: a real engine on free ports and real websocket clients."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from engine.app import App
from engine.config import Config
from signaling.tokens import mint
from tests.redis_server import RedisServer, SharedRedis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(host="127.0.0.1", http_port=0, ws_port=0, data_dir=str(tmp_path / "data"),
                  secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20,
                  demo_catalog=False)


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[App]:
    """A started App for ``config``, stopped on the way out."""
    app = App(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def engine(config: Config) -> AsyncIterator[App]:
    async with running(config) as app:
        yield app


class Client:
    """A websocket client that speaks the channel's JSON envelope."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        import asyncio

        return orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def recv_type(self, type: str, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            message = await self.recv(timeout)
            if message["type"] == type:
                return message

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def answers(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``count`` acks or errors, in the order they came, skipping room events."""
        got: list[dict[str, Any]] = []
        while len(got) < count:
            reply = await self.recv(timeout)
            if reply["type"] in ("ack", "error"):
                got.append(reply)
        return got

    async def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send an action and return its ack or error, skipping room events in between."""
        await self.send(message)
        while True:
            reply = await self.recv(timeout)
            if reply.get("re") == message.get("id") and reply["type"] in ("ack", "error"):
                return reply

    async def close(self) -> None:
        await self.ws.close()


def token(app: App, room: str = "demo", role: str = "viewer", sub: str | None = None, ttl: int = 3600) -> str:
    return mint(app.secret, room, role, sub, ttl)


async def connect(app: App, tok: str | None = None, query: str = "", **kwargs: Any) -> Client:
    tok = tok if tok is not None else token(app)
    url = f"ws://127.0.0.1:{app.ws_port}/ws?token={tok}{query}"
    # An unbounded client queue: a test that reads its clients one after the other must not
    # leave the others paused (a paused client cannot see the server's close frame).
    kwargs.setdefault("max_queue", None)
    return Client(await websockets.connect(url, **kwargs))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """The `livecart serve` processes a test started (as nodes), terminated after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[SharedRedis]:
    """The run's Redis (the machine's at 127.0.0.1:6379, or one started here); never skipped."""
    redis = SharedRedis()
    try:
        yield redis
    finally:
        redis.close()


@dataclass(frozen=True)
class RedisTarget:
    """Where one test keeps its Redis keys: the URL and a prefix of its own."""

    url: str
    prefix: str


@pytest.fixture
async def redis_target(shared_redis: SharedRedis) -> AsyncIterator[RedisTarget]:
    """A fresh key prefix on the shared Redis; the test's keys are deleted afterwards."""
    import redis.asyncio as aioredis

    target = RedisTarget(shared_redis.url, shared_redis.new_prefix())
    yield target
    client = aioredis.from_url(target.url)
    try:
        keys = [key async for key in client.scan_iter(match=target.prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own (append-only), which the test may stop and restart."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
