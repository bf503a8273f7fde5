"""Helpers for the commerce integration tests: a settable clock, a REST caller, joined clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from engine.app import App
from engine.config import Config
from tests.conftest import Client, RedisTarget, connect, token

MUG = {"id": "mug", "title": "Mug", "description": "A mug", "price": 1200, "currency": "EUR",
       "image_url": "/img/mug.png", "stock": 10}


#: The backends a test parametrised over them runs on: embedded (memory, SQLite), or Redis.
BACKENDS = ("memory", "redis")


def on_backend(config: Config, backend: str, target: RedisTarget) -> Config:
    """The engine on its embedded backends, or with every shared backend on Redis under the test's prefix."""
    if backend == "memory":
        return config
    return config.replace(redis_url=target.url, redis_prefix=target.prefix)


class Clock:
    """The room clock under test control: starts at the real time, moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def running(config: Config, clock: Clock | None = None) -> AsyncIterator[App]:
    """An engine on free ports whose commerce runs on `clock` (the real time when None)."""
    app = App(config)
    if clock is not None:
        app.commerce.clock = clock
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


class Rest:
    """JSON over real HTTP to the engine; returns (status, body)."""

    def __init__(self, app: App, session: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{app.http_port}"
        self.session = session

    async def call(self, method: str, path: str, auth: str | None = None, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as response:
            return response.status, await response.json()


async def joined(app: App, role: str = "viewer", sub: str | None = None, room: str = "demo",
                 **kwargs: Any) -> tuple[Client, dict[str, Any]]:
    """A websocket client in the room and the snapshot it got."""
    client = await connect(app, token(app, room, role, sub), **kwargs)
    return client, await client.recv_type("snapshot")


async def events_until(client: Client, done: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every message up to and including the first for which done(message) is true."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            seen.append(await client.recv(timeout))
            if done(seen[-1]):
                return seen


async def no_message(client: Client, type: str, wait: float = 0.3) -> None:
    """Assert that no message of `type` arrives within `wait` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while True:
                message = await client.recv(wait)
                assert message["type"] != type, message


async def request_seen(client: Client, message: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send an action; its ack or error, and the messages that arrived before it (events it caused
    to this user, such as cart.added or order.placed, come before the ack)."""
    await client.send(message)
    seen = await events_until(client, lambda m: m.get("re") == message["id"] and m["type"] in ("ack", "error"))
    return seen[-1], seen[:-1]


async def tap(client: Client, message: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Send a tap; its ack or error, and the cart line it added: the `cart.added` naming the ack's
    reservation, which comes before the ack (None for a refusal, or a retry: it adds nothing)."""
    reply, seen = await request_seen(client, {"type": "tap", **message})
    added = [m for m in seen if m["type"] == "cart.added" and m["reservation"] == reply.get("reservation")]
    if not added:
        return reply, None
    return reply, {k: v for k, v in added[-1].items() if k != "type"}
