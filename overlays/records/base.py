"""The RecordStore interface: what the shop keeps across restarts and shares between nodes.

Durable commerce records: catalog products, pinned tags, sales and orders, with the sold units per
pool and user and the totals rebuilt from orders. Reservations are not stored: units held at a
crash simply return to stock. An order transition and its purchase-log entry are written together
(one SQLite transaction, one Redis script), so a reader of the log never misses an acknowledged
order and never sees one twice. Backends: sqlite.py (the embedded default), redis.py (nodes
sharing one Redis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable


class SalesFigures(NamedTuple):
    """A room's sales as every node shows them: orders not cancelled (count, units, revenue per
    currency) and the units of those placed within the recent window."""

    orders: int
    units: int
    revenue: dict[str, int]
    recent: int


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

    async def put_order(self, order: dict[str, Any], event: Mapping[str, Any]) -> None:
        """Insert or update an order (its status) and append `event`, the CloudEvent of its
        transition, to the purchase log, in one transaction: both are durable, or neither is.
        Lines are written with the first put; the event is appended once per (source, id)."""
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


@runtime_checkable
class SharedRecords(Protocol):
    """Records several nodes write (Redis): each keeps its copy of a room's offer current by its
    revision, and reads the room's sales figures from them rather than counting its own orders."""

    async def revisions(self, rooms: list[str]) -> list[int]:
        """Each room's revision, moved by every write of its catalog, tags or sales."""
        ...

    async def figures(self, rooms: list[str], since: float) -> list[SalesFigures]:
        """Each room's sales figures, counted over every node's orders as they are written: the
        totals, and the units of orders placed after `since` (the recent window's start)."""
        ...
