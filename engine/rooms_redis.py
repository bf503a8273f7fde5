"""Rooms and their stream keys on Redis, for nodes that share them.

Keys: ``P{rooms}:rooms`` (hash room id -> JSON of the Room) and the pub/sub channel
``P{rooms}:changed`` (a room id, published after each create or change).

Every node caches every room (``Rooms.get`` is synchronous and on every hot path). The cache is
loaded whole before serving, then follows the channel: a room created or changed on node A is
known on node B one pub/sub delivery and one HGET later (about a millisecond on a LAN). While
the subscription is down (Redis restarting, unreachable) B keeps its cache; when it subscribes
again it reloads the whole hash, so a change published meanwhile is never missed for longer
than the outage plus one reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict

import orjson
import redis
from redis.asyncio import Redis

from engine.rediscalls import UNREACHABLE, redis_at_start, redis_unavailable, stop_following
from engine.rooms import Room

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # one wait for a published change; how long stop() may take
RETRY_SECONDS = 0.5  # between attempts to subscribe again while Redis is away


def _room(body: bytes) -> Room:
    return Room(**orjson.loads(body))


class RedisRoomDirectory:
    """A RoomDirectory (engine.rooms) in one Redis hash, with changes published to every node."""

    def __init__(self, client: Redis, url: str, prefix: str = "livecart:", timeout: float = 1.0) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self.key = f"{prefix}{{rooms}}:rooms"
        self.channel = f"{prefix}{{rooms}}:changed"
        self._insert = client.register_script(
            "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then"
            " redis.call('PUBLISH', KEYS[2], ARGV[1]) return 1 end return 0")
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def load(self) -> list[Room]:
        """Read before serving, on a short-lived blocking client (the constructor of the app is not async)."""
        with redis_at_start(self._url), redis.Redis.from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout) as client:
            return [_room(body) for body in client.hgetall(self.key).values()]

    async def insert(self, room: Room) -> bool:
        with redis_unavailable():
            return bool(await self._insert(keys=[self.key, self.channel], args=[room.id, orjson.dumps(asdict(room))]))

    async def save(self, room: Room) -> None:
        with redis_unavailable():
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.hset(self.key, room.id, orjson.dumps(asdict(room))).publish(self.channel, room.id).execute()

    async def follow(self, learn: Callable[[Room], None], reload: Callable[[list[Room]], None]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(learn, reload), name="rooms-follow")

    async def _follow(self, learn: Callable[[Room], None], reload: Callable[[list[Room]], None]) -> None:
        away = False
        while not self._stopping:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                reload([_room(body) for body in (await self._client.hgetall(self.key)).values()])
                if away:
                    log.warning("rooms: Redis answers again; the room directory is reloaded")
                    away = False
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
                    if message is not None and message["type"] == "message":
                        body = await self._client.hget(self.key, message["data"])
                        if body is not None:
                            learn(_room(body))
            except UNREACHABLE as exc:
                if not away:
                    log.warning("rooms: Redis is unavailable (%s); rooms other nodes change are learnt when it"
                                " answers again", exc)
                away = True
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                with contextlib.suppress(*UNREACHABLE):
                    await pubsub.aclose()

    async def stop(self) -> None:
        """Stop following at the end of the current wait (see RedisPurchaseLog.stop)."""
        self._stopping = True
        await stop_following(self._task)
        self._task = None
