"""Helpers for the commerce tests: a settable clock and a driver for non-suspending coroutines."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from engine.storage import Database
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.records import SqliteRecords
from overlays.shop import Shop, ShopConfig
from overlays.stock.memory import MemoryStockStore

T = TypeVar("T")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that must finish without suspending: the memory backends are atomic
    because they never await, and this fails loudly if one ever does."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


def make_shop(clock: Clock, db: Database | None = None, **config: Any) -> Shop:
    """A shop on an in-memory database whose calls run inline (never suspend), so `run` can
    drive it; its purchase log is `shop._records.log`."""
    db = db or Database(":memory:", threaded=False)
    return Shop(
        "room1",
        "host1",
        stock=MemoryStockStore(),
        records=SqliteRecords(db, SqlitePurchaseLog(db)),
        config=ShopConfig(**config),
        clock=clock,
    )
