"""Fixtures for the commerce tests. The contract suites take `stock` and `purchase_log`, which are
parametrized over STOCK_BACKENDS and LOG_BACKENDS, so the same contracts run against every backend
(the Redis ones on the test's own key prefix, see tests/conftest.py's `redis_target`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from shopkit import Clock, make_shop

from overlays.purchases.memory import MemoryPurchaseLog
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.shop import Shop
from overlays.stock.memory import MemoryStockStore
from overlays.stock.redis import RedisStockStore
from tests.redis_server import SharedRedis

STOCK_BACKENDS: dict[str, Callable[[Any], Any]] = {
    "memory": lambda redis: MemoryStockStore(),
    "redis": lambda redis: RedisStockStore.from_url(redis.url, prefix=redis.new_prefix()),
}
LOG_BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp_path: MemoryPurchaseLog(max_entries=5),
    "sqlite": lambda tmp_path: SqlitePurchaseLog(tmp_path / "log.db", max_entries=5),
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


@pytest.fixture(params=sorted(LOG_BACKENDS))
def purchase_log(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return LOG_BACKENDS[request.param](tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(clock: Clock) -> Shop:
    return make_shop(clock)
