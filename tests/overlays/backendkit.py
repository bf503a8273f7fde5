"""The purchase log and record store backends the contract suites run against, each opened on its
own storage (a temporary SQLite file, or a key prefix of the test's own on the test Redis)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from engine.storage import Database
from overlays.purchases.memory import MemoryPurchaseLog
from overlays.purchases.redis import RedisPurchaseLog
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.records import SqliteRecords
from overlays.records.redis import RedisRecords

LOG_KINDS = ("memory", "sqlite", "redis")
RECORD_KINDS = ("sqlite", "redis")


@contextlib.asynccontextmanager
async def redis_log(url: str, prefix: str, max_entries: int,
                    group: str = "services") -> AsyncIterator[RedisPurchaseLog]:
    """A started RedisPurchaseLog with its own clients (one for the blocking reads that wake readers)."""
    client, waker = Redis.from_url(url), Redis.from_url(url)
    log = RedisPurchaseLog(client, prefix, max_entries, group, waker=waker)
    await log.start()
    try:
        yield log
    finally:
        await log.stop()
        await client.aclose()
        await waker.aclose()


@contextlib.asynccontextmanager
async def open_log(kind: str, tmp_path: Path, target: Any, max_entries: int) -> AsyncIterator[Any]:
    if kind == "memory":
        yield MemoryPurchaseLog(max_entries=max_entries)
    elif kind == "sqlite":
        log = SqlitePurchaseLog(tmp_path / "log.db", max_entries=max_entries)
        try:
            yield log
        finally:
            log.close()
    else:
        async with redis_log(target.url, target.prefix, max_entries) as log:
            yield log


@contextlib.asynccontextmanager
async def open_records(kind: str, tmp_path: Path, target: Any, max_entries: int) -> AsyncIterator[Any]:
    """A record store and the purchase log it appends order transitions to (`store.log`)."""
    if kind == "sqlite":
        db = Database(tmp_path / "records.db")
        try:
            yield SqliteRecords(db, SqlitePurchaseLog(db, max_entries))
        finally:
            db.close()
    else:
        async with redis_log(target.url, target.prefix, max_entries) as log:
            yield RedisRecords(log)
