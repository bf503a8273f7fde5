"""The room's sales figures as records several nodes share count them (overlays.records.redis):
totals and the units of the recent window moved by the order script itself, a cancelled order
out of both, a retried write counted once, the window pruned by whoever reads, and the recent
orders bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from backendkit import redis_log

from overlays.records.base import SalesFigures
from overlays.records.redis import RedisRecords
from tests.conftest import RedisTarget
from tests.overlays.test_record_store_contract import close, line, order, place

T0 = 1_700_000_000.0  # order(n) is placed at T0 + n


@pytest.fixture
async def records(redis_target: RedisTarget) -> AsyncIterator[RedisRecords]:
    async with redis_log(redis_target.url, redis_target.prefix, 100) as log:
        yield RedisRecords(log, max_recent=3)


async def test_totals_and_recent_units_over_every_writer(records: RedisRecords, redis_target: RedisTarget) -> None:
    async with redis_log(redis_target.url, redis_target.prefix, 100) as log:
        other = RedisRecords(log, max_recent=3)  # a second node on the same Redis and prefix
        first, second = order(1, lines=[line("mug", 2)]), order(2, "u2", lines=[line("cap", 1, 900)])
        await place(records, first)
        await place(other, second)
        await place(other, second)  # a retried write moves nothing twice
        want = SalesFigures(2, 3, {"EUR": 1900}, 3)
        assert await records.figures(["r", "elsewhere"], T0) == [want, SalesFigures(0, 0, {}, 0)]
        assert await other.figures(["r"], T0) == [want]
        assert await records.totals("r") == (2, 3, {"EUR": 1900})

        await close(other, first, "cancelled")  # out of the totals and the window
        assert await records.figures(["r"], T0) == [SalesFigures(1, 1, {"EUR": 900}, 1)]
        await close(records, second, "paid")  # still counted
        assert await records.figures(["r"], T0 + 1) == [SalesFigures(1, 1, {"EUR": 900}, 1)]
        # The window moves past order 2 (placed at T0 + 2): it leaves the recent units, once.
        assert await other.figures(["r"], T0 + 2) == [SalesFigures(1, 1, {"EUR": 900}, 0)]
        assert await records.figures(["r"], T0 + 2) == [SalesFigures(1, 1, {"EUR": 900}, 0)]


async def test_the_recent_orders_are_bounded_oldest_first(records: RedisRecords) -> None:
    for n in range(1, 6):
        await place(records, order(n, f"u{n}", lines=[line("mug", n)]))
    # Five orders of 1..5 units; the three newest (3 + 4 + 5 units) are kept for the window.
    assert await records.figures(["r"], T0) == [SalesFigures(5, 15, {"EUR": 7500}, 12)]


def test_max_recent_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_recent"):
        RedisRecords(None, max_recent=0)  # type: ignore[arg-type]  # refused before the log is used
