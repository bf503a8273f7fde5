"""Fixtures for the commerce tests. The contract suites take `stock` and `purchase_log`, which are
parametrized over STOCK_BACKENDS and LOG_BACKENDS: add a Redis backend there to run the same
contracts against it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from shopkit import Clock, make_shop

from overlays.purchases.memory import MemoryPurchaseLog
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.shop import Shop
from overlays.stock.memory import MemoryStockStore

STOCK_BACKENDS: dict[str, Callable[[], Any]] = {"memory": MemoryStockStore}
LOG_BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp_path: MemoryPurchaseLog(max_entries=5),
    "sqlite": lambda tmp_path: SqlitePurchaseLog(tmp_path / "log.db", max_entries=5),
}


@pytest.fixture(params=sorted(STOCK_BACKENDS))
def stock(request: pytest.FixtureRequest) -> Any:
    return STOCK_BACKENDS[request.param]()


@pytest.fixture(params=sorted(LOG_BACKENDS))
def purchase_log(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return LOG_BACKENDS[request.param](tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(clock: Clock) -> Shop:
    return make_shop(clock)
