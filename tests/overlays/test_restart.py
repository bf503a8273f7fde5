"""Durability: the SQLite records and purchase log survive closing and reopening the db file, and a
Shop rebuilt from them has its catalog, sales, sold counts and orders back (held units return)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from shopkit import Clock

from engine.storage import Database
from overlays.events import DomainError
from overlays.orders import Order, OrderLine
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.records import SqliteRecords
from overlays.shop import Shop, ShopConfig
from overlays.stock.memory import MemoryStockStore

MUG = {"id": "mug", "title": "Mug", "price": 1200, "currency": "EUR", "stock": 5}


def open_shop(path: Path, clock: Clock) -> tuple[Shop, Database]:
    db = Database(path)
    shop = Shop(
        "room1",
        "host1",
        stock=MemoryStockStore(),
        records=SqliteRecords(db, SqlitePurchaseLog(db)),
        config=ShopConfig(),
        clock=clock,
    )
    return shop, db


async def test_purchase_log_survives_reopen(tmp_path: Path) -> None:
    log = SqlitePurchaseLog(tmp_path / "log.db")
    order = Order("o1", "r", "h", "u", "q", "EUR", [OrderLine("p", None, "P", "pool", 1, 5, 5)], 10.0)
    first = await log.append(order.cloud_event("placed"))
    log.close()
    log = SqlitePurchaseLog(tmp_path / "log.db")
    assert await log.last_id() == first
    assert (await log.read())[0].event == order.cloud_event("placed")
    assert await log.append(order.cloud_event("placed")) == first
    second = await log.append({**order.cloud_event("placed"), "id": "o2.placed"})
    assert second > first
    log.close()


async def test_records_survive_reopen(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    records = SqliteRecords(db, SqlitePurchaseLog(db))
    await records.put_product("r", {"id": "p", "title": "P"})
    await records.put_sale("r", {"id": "s"})
    order = Order("o1", "r", "h", "u", "q", "EUR", [OrderLine("p", None, "P", "pool", 2, 5, 10)], 10.0)
    await records.put_order(order.to_dict(), order.cloud_event("placed"))
    db.close()
    db = Database(tmp_path / "db")
    records = SqliteRecords(db, SqlitePurchaseLog(db))
    assert await records.products("r") == [{"id": "p", "title": "P"}]
    assert await records.sales("r") == [{"id": "s"}]
    assert await records.order("r", "o1") == order.to_dict()
    assert await records.order_for_request("r", "u", "q") == order.to_dict()
    assert await records.sold("r") == {"pool": {"u": 2}}
    assert await records.totals("r") == (1, 2, {"EUR": 10})
    assert await records.unlogged_orders("r") == []  # the order's log entry committed with it
    assert [e.event for e in await records.log.read()] == [order.cloud_event("placed")]
    await records.delete_product("r", "p")
    await records.delete_sale("r", "s")
    assert await records.products("r") == [] and await records.sales("r") == []


async def test_shop_restart_rebuilds_state(tmp_path: Path) -> None:
    clock = Clock()
    shop, db = open_shop(tmp_path / "db", clock)
    await shop.put_product(MUG)
    await shop.start_sale(
        {
            "id": "flash",
            "product_id": "mug",
            "price": 500,
            "quantity": 3,
            "duration": 600,
            "per_user_limit": 2,
        }
    )
    await shop.tap("u1", "r1", sale_id="flash", qty=2)
    placed = (await shop.checkout("u1", "c1")).result
    await shop.tap("u2", "r1", product_id="mug", qty=2)
    cancelled = (await shop.checkout("u2", "c1")).result
    await shop.cancel(cancelled["id"])
    await shop.tap("u2", "r2", product_id="mug", qty=1)
    kept = (await shop.checkout("u2", "c2")).result
    await shop.tap("u3", "r1", product_id="mug", qty=4)  # held at "crash" time
    db.close()  # simulated SIGKILL: nothing else is flushed

    clock.advance(5)
    shop, db = open_shop(tmp_path / "db", clock)
    await shop.load()
    snap = await shop.snapshot("u3")
    assert snap["products"][0]["available"] == 4  # 5 - 1 sold; u3's held units came back
    assert snap["sales"][0]["remaining"] == 1 and snap["sales"][0]["state"] == "live"
    assert snap["cart"]["lines"] == []
    assert snap["totals"] == {"orders": 2, "units": 3, "revenue": {"EUR": 2200}}
    assert (await shop.checkout("u1", "c1")).result["id"] == placed["id"]
    assert (await shop.confirm(kept["id"])).result["status"] == "paid"
    with pytest.raises(DomainError) as err:  # the per-user limit counts units bought before the restart
        await shop.tap("u1", "again", sale_id="flash")
    assert err.value.code == "limit_reached"
    types = [e.event["type"].rsplit(".", 1)[1] for e in await shop._records.log.read()]
    assert types == ["placed", "placed", "cancelled", "placed", "paid"]
    db.close()


async def test_load_repairs_unlogged_transitions(tmp_path: Path) -> None:
    """A database written before an order and its log entry shared a transaction can hold paid
    orders with no entries: loading appends the missing ones, in order."""
    clock = Clock()
    shop, db = open_shop(tmp_path / "db", clock)
    await shop.put_product(MUG)
    await shop.tap("u1", "r1", product_id="mug")
    order = (await shop.checkout("u1", "c1")).result
    paid = {**(await shop._records.order("room1", order["id"])), "status": "paid", "closed_at": clock.now}
    db.close()
    with sqlite3.connect(tmp_path / "db") as conn:  # what such a crash left behind
        conn.execute("UPDATE orders SET status = 'paid', body = ?, logged = NULL", (orjson.dumps(paid),))
        conn.execute("DELETE FROM purchase_log")
    conn.close()

    shop, db = open_shop(tmp_path / "db", clock)
    await shop.load()
    entries = await shop._records.log.read()
    assert [e.event["id"] for e in entries] == [f"{order['id']}.placed", f"{order['id']}.paid"]
    assert await shop._records.unlogged_orders("room1") == []
    db.close()
