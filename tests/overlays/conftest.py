"""Fixtures for the commerce tests. The contract suites take `stock`, `purchase_log` and `records`,
which are parametrized over STOCK_BACKENDS and backendkit's LOG_KINDS and RECORD_KINDS, so the same
contracts run against every backend (Redis ones on a key prefix of the test's own)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from backendkit import LOG_KINDS, RECORD_KINDS, open_log, open_records
from shopkit import Clock, make_shop

from overlays.shop import Shop
from overlays.stock.memory import MemoryStockStore

STOCK_BACKENDS: dict[str, Callable[[], Any]] = {"memory": MemoryStockStore}


@pytest.fixture(params=sorted(STOCK_BACKENDS))
def stock(request: pytest.FixtureRequest) -> Any:
    return STOCK_BACKENDS[request.param]()


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
