"""What nodes share on Redis (``--redis-url``): the engine's settings (the token secret and the admin
key), the room directory, the commerce records and the purchase log.

One client serves the calls of all of them (at most ``--redis-connections`` connections, as the
stock store's), each bounded by ``--redis-timeout`` and not retried, so an action meets an
unreachable Redis with ``unavailable`` within about that timeout (the client retries, with the
same request id). The purchase log's wake task has a client of its own, whose blocking reads
outlast that timeout.
"""

from __future__ import annotations

import secrets

import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from engine.config import Config
from engine.rediscalls import redacted, redis_at_start
from engine.rooms_redis import RedisRoomDirectory
from overlays.purchases.redis import WAIT_BLOCK_MS, RedisPurchaseLog
from overlays.records.redis import RedisRecords
from overlays.stock.redis import connect


def kept_shared_setting(config: Config, key: str) -> str:
    """The setting ``key`` the nodes keep on Redis, read without creating anything (``livecart token``);
    LookupError saying why when Redis does not answer or keeps none."""
    settings = f"{config.redis_prefix}{{settings}}:settings"
    try:
        with redis.Redis.from_url(config.redis_url, socket_timeout=config.redis_timeout,
                                  socket_connect_timeout=config.redis_timeout) as client:
            value = client.hget(settings, key)
    except (redis.RedisError, OSError) as exc:
        raise LookupError(f"cannot read {settings} on {redacted(config.redis_url)}: {exc}") from None
    if value is None:
        raise LookupError(f"no {key} in {settings} on {redacted(config.redis_url)} "
                          "(no node has started with this prefix)")
    return str(value.decode())


class SharedState:
    """The Redis-backed settings, room directory, records and purchase log of one node."""

    def __init__(self, config: Config) -> None:
        if config.redis_timeout <= 0:
            raise ValueError("--redis-timeout must be positive")
        if not config.purchase_group or any(ch.isspace() for ch in config.purchase_group):
            raise ValueError("--purchase-group must be a name without spaces")
        self._url, self._prefix, self._timeout = config.redis_url, config.redis_prefix, config.redis_timeout
        self.client = connect(config.redis_url, timeout=config.redis_timeout, max_connections=config.redis_connections)
        self._waker = Redis.from_url(config.redis_url, socket_timeout=config.redis_timeout + WAIT_BLOCK_MS / 1000,
                                     socket_connect_timeout=config.redis_timeout, retry=Retry(NoBackoff(), 0))
        self.log = RedisPurchaseLog(self.client, config.redis_prefix, config.purchase_log_size,
                                    config.purchase_group, waker=self._waker)
        self.records = RedisRecords(self.log)
        self.rooms = RedisRoomDirectory(self.client, config.redis_url, config.redis_prefix, config.redis_timeout)

    def secret_setting(self, key: str) -> str:
        """A random secret kept under ``key`` in ``P{settings}:settings``, created by the first node
        that asks: every node then signs and checks tokens with the same secret."""
        settings = f"{self._prefix}{{settings}}:settings"
        with redis_at_start(self._url), redis.Redis.from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout) as client:
            client.hsetnx(settings, key, secrets.token_urlsafe(32))
            return str(client.hget(settings, key).decode())

    async def start(self) -> None:
        await self.log.start()

    async def stop(self) -> None:
        await self.log.stop()
        await self._waker.aclose()
        await self.client.aclose()
