"""Durable commerce records: catalog products, pinned tags, sales and orders, in SQLite (stdlib, WAL).

What a restart needs and nothing more: products, pinned tags and sales as last put, orders with their status and
which transition was last appended to the purchase log (so a crash between the two is repaired on
start), and the sold units per pool and user rebuilt from orders. Reservations are not stored: units
held at crash time simply return to stock. Every write commits before it returns.

`RecordStore` is the interface the shop depends on, so a Redis-backed store can stand in later.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

import orjson

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


class RecordStore(Protocol):
    async def put_product(self, room: str, product: dict[str, Any]) -> None: ...
    async def delete_product(self, room: str, product_id: str) -> None: ...
    async def products(self, room: str) -> list[dict[str, Any]]: ...
    async def put_tag(self, room: str, tag: dict[str, Any]) -> None:
        """Pin or move a tag; a moved tag keeps its place in the pin order."""
        ...

    async def delete_tag(self, room: str, tag_id: str) -> None: ...

    async def tags(self, room: str) -> list[dict[str, Any]]:
        """The room's pinned tags in pin order."""
        ...

    async def put_sale(self, room: str, sale: dict[str, Any]) -> None: ...
    async def delete_sale(self, room: str, sale_id: str) -> None: ...
    async def sales(self, room: str) -> list[dict[str, Any]]: ...

    async def put_order(self, order: dict[str, Any]) -> None:
        """Insert or update an order (its status); lines are written with the first put."""
        ...

    async def mark_logged(self, room: str, order_id: str, status: str) -> None:
        """Record that the purchase log holds the order's `status` transition."""
        ...

    async def order(self, room: str, order_id: str) -> dict[str, Any] | None: ...
    async def order_for_request(self, room: str, user: str, request_id: str) -> dict[str, Any] | None: ...

    async def orders(self, room: str, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """The room's orders, newest first, optionally of one status (host and payment listings)."""
        ...

    async def unlogged_orders(self, room: str) -> list[tuple[dict[str, Any], str | None]]:
        """(order, last logged status) for orders whose current status is not yet logged."""
        ...

    async def sold(self, room: str) -> dict[str, dict[str, int]]:
        """pool -> user -> units in orders that are not cancelled."""
        ...

    async def totals(self, room: str) -> tuple[int, int, dict[str, int]]:
        """(orders, units, revenue per currency) over orders that are not cancelled."""
        ...


class SqliteRecords:
    """RecordStore on a connection the caller owns (the app's storage opens it with WAL)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        with conn:
            conn.executescript(_SCHEMA)

    def _put(self, table: str, room: str, item: dict[str, Any]) -> None:
        """Insert or update in place: an update keeps the item's rowid, so its place in the
        room's order (catalog, pins, sales) survives a restart."""
        with self._conn:
            self._conn.execute(
                f"INSERT INTO {table} (room, id, body) VALUES (?, ?, ?)"
                " ON CONFLICT (room, id) DO UPDATE SET body = excluded.body",
                (room, item["id"], orjson.dumps(item)),
            )

    def _all(self, table: str, room: str) -> list[dict[str, Any]]:
        rows = self._conn.execute(f"SELECT body FROM {table} WHERE room = ? ORDER BY rowid", (room,))
        return [orjson.loads(body) for (body,) in rows]

    async def put_product(self, room: str, product: dict[str, Any]) -> None:
        self._put("products", room, product)

    async def delete_product(self, room: str, product_id: str) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM products WHERE room = ? AND id = ?", (room, product_id))

    async def products(self, room: str) -> list[dict[str, Any]]:
        return self._all("products", room)

    async def put_tag(self, room: str, tag: dict[str, Any]) -> None:
        self._put("tags", room, tag)

    async def delete_tag(self, room: str, tag_id: str) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM tags WHERE room = ? AND id = ?", (room, tag_id))

    async def tags(self, room: str) -> list[dict[str, Any]]:
        return self._all("tags", room)

    async def put_sale(self, room: str, sale: dict[str, Any]) -> None:
        self._put("sales", room, sale)

    async def delete_sale(self, room: str, sale_id: str) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM sales WHERE room = ? AND id = ?", (room, sale_id))

    async def sales(self, room: str) -> list[dict[str, Any]]:
        return self._all("sales", room)

    async def put_order(self, order: dict[str, Any]) -> None:
        room, order_id = order["room"], order["id"]
        with self._conn:
            self._conn.execute(
                "INSERT INTO orders (room, id, user, request_id, status, currency, quantity, total,"
                " placed_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room, id) DO UPDATE SET status = excluded.status, body = excluded.body",
                (
                    room,
                    order_id,
                    order["user"],
                    order["request_id"],
                    order["status"],
                    order["currency"],
                    order["quantity"],
                    order["total"],
                    order["placed_at"],
                    orjson.dumps(order),
                ),
            )
            self._conn.executemany(  # lines never change: the first write wins
                "INSERT OR IGNORE INTO order_lines (room, order_id, n, pool, quantity)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (room, order_id, n, line["pool"], line["quantity"])
                    for n, line in enumerate(order["lines"])
                ],
            )

    async def mark_logged(self, room: str, order_id: str, status: str) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE orders SET logged = ? WHERE room = ? AND id = ?", (status, room, order_id)
            )

    async def order(self, room: str, order_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT body FROM orders WHERE room = ? AND id = ?", (room, order_id)
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    async def order_for_request(self, room: str, user: str, request_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT body FROM orders WHERE room = ? AND user = ? AND request_id = ?", (room, user, request_id)
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    async def orders(self, room: str, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT body FROM orders WHERE room = ? AND (? IS NULL OR status = ?)"
            " ORDER BY placed_at DESC, id LIMIT ? OFFSET ?",
            (room, status, status, limit, offset),
        )
        return [orjson.loads(body) for (body,) in rows]

    async def unlogged_orders(self, room: str) -> list[tuple[dict[str, Any], str | None]]:
        rows = self._conn.execute(
            "SELECT body, logged FROM orders WHERE room = ? AND (logged IS NULL OR logged != status)"
            " ORDER BY placed_at",
            (room,),
        )
        return [(orjson.loads(body), logged) for body, logged in rows]

    async def sold(self, room: str) -> dict[str, dict[str, int]]:
        rows = self._conn.execute(
            "SELECT l.pool, o.user, SUM(l.quantity) FROM order_lines l JOIN orders o"
            " ON o.room = l.room AND o.id = l.order_id"
            " WHERE l.room = ? AND o.status != 'cancelled' GROUP BY l.pool, o.user",
            (room,),
        )
        sold: dict[str, dict[str, int]] = {}
        for pool, user, units in rows:
            sold.setdefault(pool, {})[user] = units
        return sold

    async def totals(self, room: str) -> tuple[int, int, dict[str, int]]:
        rows = self._conn.execute(
            "SELECT currency, COUNT(*), SUM(quantity), SUM(total) FROM orders"
            " WHERE room = ? AND status != 'cancelled' GROUP BY currency",
            (room,),
        ).fetchall()
        return sum(r[1] for r in rows), sum(r[2] for r in rows), {r[0]: r[3] for r in rows}
