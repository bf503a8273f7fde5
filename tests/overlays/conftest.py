"""Fixtures for the commerce tests. The contract suites take `stock`, `purchase_log` and `records`,
which are parametrized over STOCK_BACKENDS and backendkit's LOG_KINDS and RECORD_KINDS, so the same
contracts run against every backend (the Redis ones on the test's own key prefix, see
tests/conftest.py's `redis_target`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from backendkit import LOG_KINDS, RECORD_KINDS, open_log, open_records
from shopkit import Clock, make_shop

from overlays.shop import Shop
from overlays.stock.memory import MemoryStockStore
from overlays.stock.redis import RedisStockStore
from tests.redis_server import SharedRedis

STOCK_BACKENDS: dict[str, Callable[[Any], Any]] = {
    "memory": lambda redis: MemoryStockStore(),
    "redis": lambda redis: RedisStockStore.from_url(redis.url, prefix=redis.new_prefix()),
}


@pytest.fixture(params=sorted(STOCK_BACKENDS))
async def stock(request: pytest.FixtureRequest, shared_redis: SharedRedis) -> AsyncIterator[Any]:
    """A fresh store of each backend; a Redis one on a key prefix of its own, deleted afterwards."""
    store = STOCK_BACKENDS[request.param](shared_redis)
    yield store
    if isinstance(store, RedisStockStore):
        keys = [key async for key in store.client.scan_iter(match=store.prefix + "*", count=1000)]
        if keys:
            await store.client.delete(*keys)
        await store.close()


@pytest.fixture(params=LOG_KINDS)
async def purchase_log(request: pytest.FixtureRequest, tmp_path: Path, redis_target: Any) -> AsyncIterator[Any]:
    """Each PurchaseLog backend (backendkit.LOG_KINDS), keeping 5 entries."""
    async with open_log(request.param, tmp_path, redis_target, max_entries=5) as log:
        yield log


@pytest.fixture(params=RECORD_KINDS)
async def records(request: pytest.FixtureRequest, tmp_path: Path, redis_target: Any) -> AsyncIterator[Any]:
    """Each RecordStore backend (backendkit.RECORD_KINDS), its purchase log keeping 5 entries."""
    async with open_records(request.param, tmp_path, redis_target, max_entries=5) as store:
        yield store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(clock: Clock) -> Shop:
    return make_shop(clock)
