"""RecordStore contract: runs unchanged against every backend in backendkit.RECORD_KINDS (SQLite,
Redis), each with its purchase log keeping 5 entries (`records.log`)."""

from __future__ import annotations

from typing import Any

import pytest

from overlays.orders import CANCELLED, PAID, Order, OrderLine


def line(pool: str, quantity: int, unit: int = 500) -> OrderLine:
    return OrderLine(pool, None, pool.title(), pool, quantity, unit, quantity * unit)


def order(n: int, user: str = "u1", room: str = "r", lines: list[OrderLine] | None = None,
          currency: str = "EUR") -> Order:
    return Order(f"o{n}", room, "host", user, f"req{n}", currency, lines or [line("mug", 1)], 1_700_000_000.0 + n)


async def place(records: Any, o: Order) -> None:
    await records.put_order(o.to_dict(), o.cloud_event("placed"))


async def close(records: Any, o: Order, status: str) -> None:
    o.close(status, o.placed_at + 60)
    await records.put_order(o.to_dict(), o.cloud_event(status))


@pytest.mark.parametrize("kind", ["product", "tag", "sale"])
async def test_items_keep_their_place_per_room(records: Any, kind: str) -> None:
    put, delete, items = (getattr(records, f"put_{kind}"), getattr(records, f"delete_{kind}"),
                          getattr(records, f"{kind}s"))
    assert await items("r") == []
    for item_id in ("a", "b", "c"):
        await put("r", {"id": item_id, "v": 1})
    await put("other", {"id": "z", "v": 1})
    await put("r", {"id": "a", "v": 2})  # an update keeps its place
    assert await items("r") == [{"id": "a", "v": 2}, {"id": "b", "v": 1}, {"id": "c", "v": 1}]
    await delete("r", "b")
    await delete("r", "missing")
    await put("r", {"id": "b", "v": 3})  # put again after a delete: last
    assert [item["id"] for item in await items("r")] == ["a", "c", "b"]
    assert await items("other") == [{"id": "z", "v": 1}]


async def test_a_placed_order_is_stored_indexed_and_logged_once(records: Any) -> None:
    o = order(1, lines=[line("mug", 2), line("tee", 1, 2000)])
    await place(records, o)
    await place(records, o)  # a retry of the same write
    assert await records.order("r", "o1") == o.to_dict()
    assert await records.order_for_request("r", "u1", "req1") == o.to_dict()
    assert await records.order_for_request("r", "u2", "req1") is None
    assert await records.order("other", "o1") is None
    entries = await records.log.read()
    assert [(e.event["id"], e.event["data"]["order"]) for e in entries] == [("o1.placed", "o1")]
    assert await records.log.last_id() == entries[0].id
    assert await records.sold("r") == {"mug": {"u1": 2}, "tee": {"u1": 1}}
    assert await records.totals("r") == (1, 3, {"EUR": 3000})
    assert await records.unlogged_orders("r") == []


async def test_transitions_move_status_counts_and_log(records: Any) -> None:
    first, second, third = order(1), order(2, user="u2", lines=[line("mug", 3)]), order(3, currency="USD")
    for o in (first, second, third):
        await place(records, o)
    await close(records, first, PAID)
    await close(records, second, CANCELLED)
    await records.put_order(second.to_dict(), second.cloud_event(CANCELLED))  # retried: nothing moves twice
    assert (await records.order("r", "o2"))["status"] == CANCELLED
    assert await records.sold("r") == {"mug": {"u1": 2}}
    assert await records.totals("r") == (2, 2, {"EUR": 500, "USD": 500})
    await close(records, third, CANCELLED)
    assert await records.totals("r") == (1, 1, {"EUR": 500})
    types = [e.event["id"] for e in await records.log.read()]
    assert types == ["o2.placed", "o3.placed", "o1.paid", "o2.cancelled", "o3.cancelled"]  # retention 5
    assert await records.unlogged_orders("r") == []


async def test_orders_newest_first_by_status_with_paging(records: Any) -> None:
    placed = [order(n) for n in range(1, 6)]
    for o in placed:
        await place(records, o)
    await close(records, placed[1], PAID)
    await close(records, placed[3], PAID)

    async def ids(status: str | None, limit: int = 10, offset: int = 0) -> list[str]:
        return [o["id"] for o in await records.orders("r", status, limit, offset)]

    assert await ids(None) == ["o5", "o4", "o3", "o2", "o1"]
    assert await ids(None, 2, 1) == ["o4", "o3"]
    assert await ids(PAID) == ["o4", "o2"]
    assert await ids("placed", 1, 1) == ["o3"]
    assert await ids(CANCELLED) == []
    assert await ids(None, 10, 5) == []
    assert await records.orders("other", None, 10, 0) == []


async def test_log_ids_follow_appends_from_orders_and_others(records: Any) -> None:
    await place(records, order(1))
    other = {**order(9).cloud_event("placed"), "id": "external"}
    other_id = await records.log.append(other)
    await place(records, order(2))
    ids = [e.id for e in await records.log.read()]
    assert ids == sorted(ids) and ids[1] == other_id and len(ids) == 3
