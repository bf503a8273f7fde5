"""RecordStore in SQLite (stdlib, WAL): catalog products, pinned tags, sales and orders.

What a restart needs and nothing more: products, pinned tags and sales as last put, orders with their
status and which transition was last appended to the purchase log, and the sold units per pool and user
rebuilt from orders. Reservations are not stored: units held at crash time simply return to stock. Every
write commits before it returns; an order transition and its purchase-log entry commit in one
transaction, so a reader of the log never misses an acknowledged order. All calls run on the
database's thread (engine.storage.Database), never on the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from engine.storage import Database
from overlays.purchases.sqlite import SqlitePurchaseLog

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    room TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (room, id)
);
CREATE TABLE IF NOT EXISTS tags (
    room TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (room, id)
);
CREATE TABLE IF NOT EXISTS sales (
    room TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (room, id)
);
CREATE TABLE IF NOT EXISTS orders (
    room TEXT NOT NULL, id TEXT NOT NULL, user TEXT NOT NULL, request_id TEXT NOT NULL,
    status TEXT NOT NULL, logged TEXT, currency TEXT NOT NULL, quantity INTEGER NOT NULL,
    total INTEGER NOT NULL, placed_at REAL NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (room, id), UNIQUE (room, user, request_id)
);
CREATE TABLE IF NOT EXISTS order_lines (
    room TEXT NOT NULL, order_id TEXT NOT NULL, n INTEGER NOT NULL, pool TEXT NOT NULL,
    quantity INTEGER NOT NULL, PRIMARY KEY (room, order_id, n)
);
"""


class SqliteRecords:
    """RecordStore on the app's Database, writing order transitions into `log`'s table (the log
    must live in the same database)."""

    def __init__(self, db: Database, log: SqlitePurchaseLog) -> None:
        assert log.db is db, "an order and its log entry commit in one transaction of one database"
        self._db = db
        self.log = log
        db.now(lambda conn: conn.executescript(_SCHEMA))

    async def _put(self, table: str, room: str, item: dict[str, Any]) -> None:
        """Insert or update in place: an update keeps the item's rowid, so its place in the
        room's order (catalog, pins, sales) survives a restart."""
        body = orjson.dumps(item)
        await self._db.write(lambda conn: conn.execute(
            f"INSERT INTO {table} (room, id, body) VALUES (?, ?, ?)"
            " ON CONFLICT (room, id) DO UPDATE SET body = excluded.body",
            (room, item["id"], body),
        ))

    async def _delete(self, table: str, room: str, item_id: str) -> None:
        await self._db.write(lambda conn: conn.execute(
            f"DELETE FROM {table} WHERE room = ? AND id = ?", (room, item_id)
        ))

    async def _bodies(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        rows = await self._db.read(lambda conn: conn.execute(sql, args).fetchall())
        return [orjson.loads(body) for (body,) in rows]

    async def _body(self, sql: str, *args: Any) -> dict[str, Any] | None:
        row = await self._db.read(lambda conn: conn.execute(sql, args).fetchone())
        return None if row is None else orjson.loads(row[0])

    async def put_product(self, room: str, product: dict[str, Any]) -> None:
        await self._put("products", room, product)

    async def delete_product(self, room: str, product_id: str) -> None:
        await self._delete("products", room, product_id)

    async def products(self, room: str) -> list[dict[str, Any]]:
        return await self._bodies("SELECT body FROM products WHERE room = ? ORDER BY rowid", room)

    async def put_tag(self, room: str, tag: dict[str, Any]) -> None:
        await self._put("tags", room, tag)

    async def delete_tag(self, room: str, tag_id: str) -> None:
        await self._delete("tags", room, tag_id)

    async def tags(self, room: str) -> list[dict[str, Any]]:
        return await self._bodies("SELECT body FROM tags WHERE room = ? ORDER BY rowid", room)

    async def put_sale(self, room: str, sale: dict[str, Any]) -> None:
        await self._put("sales", room, sale)

    async def delete_sale(self, room: str, sale_id: str) -> None:
        await self._delete("sales", room, sale_id)

    async def sales(self, room: str) -> list[dict[str, Any]]:
        return await self._bodies("SELECT body FROM sales WHERE room = ? ORDER BY rowid", room)

    async def put_order(self, order: dict[str, Any], event: Mapping[str, Any]) -> None:
        room, order_id, status = order["room"], order["id"], order["status"]
        row = (
            room, order_id, order["user"], order["request_id"], status, order["currency"],
            order["quantity"], order["total"], order["placed_at"], orjson.dumps(order),
        )
        lines = [(room, order_id, n, line["pool"], line["quantity"]) for n, line in enumerate(order["lines"])]
        logged = event["data"]["status"]  # the transition the event logs

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO orders (room, id, user, request_id, status, currency, quantity, total,"
                " placed_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room, id) DO UPDATE SET status = excluded.status, body = excluded.body",
                row,
            )
            conn.executemany(  # lines never change: the first write wins
                "INSERT OR IGNORE INTO order_lines (room, order_id, n, pool, quantity) VALUES (?, ?, ?, ?, ?)",
                lines,
            )
            self.log.append_in(conn, event)
            conn.execute("UPDATE orders SET logged = ? WHERE room = ? AND id = ?", (logged, room, order_id))

        await self._db.write(put)
        self.log.appended()

    async def order(self, room: str, order_id: str) -> dict[str, Any] | None:
        return await self._body("SELECT body FROM orders WHERE room = ? AND id = ?", room, order_id)

    async def order_for_request(self, room: str, user: str, request_id: str) -> dict[str, Any] | None:
        return await self._body(
            "SELECT body FROM orders WHERE room = ? AND user = ? AND request_id = ?", room, user, request_id
        )

    async def orders(self, room: str, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        return await self._bodies(
            "SELECT body FROM orders WHERE room = ? AND (? IS NULL OR status = ?)"
            " ORDER BY placed_at DESC, id LIMIT ? OFFSET ?",
            room, status, status, limit, offset,
        )

    async def unlogged_orders(self, room: str) -> list[tuple[dict[str, Any], str | None]]:
        rows = await self._db.read(lambda conn: conn.execute(
            "SELECT body, logged FROM orders WHERE room = ? AND (logged IS NULL OR logged != status)"
            " ORDER BY placed_at",
            (room,),
        ).fetchall())
        return [(orjson.loads(body), logged) for body, logged in rows]

    async def sold(self, room: str) -> dict[str, dict[str, int]]:
        rows = await self._db.read(lambda conn: conn.execute(
            "SELECT l.pool, o.user, SUM(l.quantity) FROM order_lines l JOIN orders o"
            " ON o.room = l.room AND o.id = l.order_id"
            " WHERE l.room = ? AND o.status != 'cancelled' GROUP BY l.pool, o.user",
            (room,),
        ).fetchall())
        sold: dict[str, dict[str, int]] = {}
        for pool, user, units in rows:
            sold.setdefault(pool, {})[user] = units
        return sold

    async def totals(self, room: str) -> tuple[int, int, dict[str, int]]:
        rows = await self._db.read(lambda conn: conn.execute(
            "SELECT currency, COUNT(*), SUM(quantity), SUM(total) FROM orders"
            " WHERE room = ? AND status != 'cancelled' GROUP BY currency",
            (room,),
        ).fetchall())
        return sum(r[1] for r in rows), sum(r[2] for r in rows), {r[0]: r[3] for r in rows}
