"""Orders and what they mean for the room: status transitions, purchase-log envelopes, social proof.

placed -> paid | cancelled; repeating the transition an order already made is a no-op (payment
callbacks retry), the other one is a conflict. Each status maps to one CloudEvent whose id is
`{order}.{status}`, so the purchase log holds each transition of each order exactly once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from overlays.events import DomainError, cloud_event
from overlays.stock.base import Reservation

PLACED, PAID, CANCELLED = "placed", "paid", "cancelled"
#: CloudEvents `type` per order status.
EVENT_TYPES = {
    PLACED: "livecart.order.placed",
    PAID: "livecart.order.paid",
    CANCELLED: "livecart.order.cancelled",
}


@dataclass(frozen=True, slots=True)
class OrderLine:
    product: str
    sale: str | None
    title: str
    pool: str
    quantity: int
    unit_amount: int
    amount: int


@dataclass(slots=True)
class Order:
    id: str
    room: str
    host: str
    user: str
    request_id: str
    currency: str
    lines: list[OrderLine]
    placed_at: float
    status: str = PLACED
    closed_at: float | None = None  # when it became paid or cancelled
    quantity: int = field(init=False)
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.quantity = sum(line.quantity for line in self.lines)
        self.total = sum(line.amount for line in self.lines)

    def close(self, status: str, now: float) -> bool:
        """Move to paid or cancelled; False if already there, conflict if in the other one."""
        if self.status == status:
            return False
        if self.status != PLACED:
            raise DomainError("conflict", f"order {self.id} is {self.status}")
        self.status, self.closed_at = status, now
        return True

    def reservations(self) -> list[Reservation]:
        """The lines as sold units of their pools, for StockStore.refund."""
        return [
            Reservation(f"{self.id}/{i}", ln.pool, self.user, ln.quantity, 0.0, ln.unit_amount)
            for i, ln in enumerate(self.lines)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Order:
        fields = {k: v for k, v in data.items() if k not in ("quantity", "total", "lines")}
        return cls(lines=[OrderLine(**line) for line in data["lines"]], **fields)

    def public(self) -> dict[str, Any]:
        """What the buyer's client sees (pools are internal)."""
        out = self.to_dict()
        for line in out["lines"]:
            del line["pool"]
        return out

    def cloud_event(self, status: str) -> dict[str, Any]:
        """The purchase-log envelope for one transition; deterministic so a re-append dedupes."""
        at = self.placed_at if status == PLACED else self.closed_at
        assert at is not None and (status == PLACED or status == self.status)
        data = {
            "order": self.id,
            "status": status,
            "room": self.room,
            "host": self.host,
            "user": self.user,
            "items": [{k: v for k, v in asdict(line).items() if k != "pool"} for line in self.lines],
            "quantity": self.quantity,
            "total_amount": self.total,
            "currency": self.currency,
        }
        return cloud_event(
            room=self.room,
            type_=EVENT_TYPES[status],
            event_id=f"{self.id}.{status}",
            subject=self.id,
            time=at,
            data=data,
        )


class SalesStats:
    """Room totals (orders not cancelled: count, units, revenue per currency) and the units bought
    in the last `window` seconds ("N bought in the last minute"), bounded by `max_recent` orders."""

    def __init__(self, window: float = 60.0, max_recent: int = 10_000) -> None:
        self.window = window
        self.orders = 0
        self.units = 0
        self.revenue: dict[str, int] = {}
        self._recent: deque[tuple[float, str, int]] = deque(maxlen=max_recent)
        self._recent_units = 0

    def load(self, orders: int, units: int, revenue: dict[str, int]) -> None:
        self.orders, self.units, self.revenue = orders, units, dict(revenue)

    def placed(self, order: Order) -> None:
        self.orders += 1
        self.units += order.quantity
        self.revenue[order.currency] = self.revenue.get(order.currency, 0) + order.total
        if len(self._recent) == self._recent.maxlen:
            self._recent_units -= self._recent[0][2]
        self._recent.append((order.placed_at, order.id, order.quantity))
        self._recent_units += order.quantity

    def cancelled(self, order: Order) -> None:
        self.orders -= 1
        self.units -= order.quantity
        left = self.revenue[order.currency] - order.total
        if left:
            self.revenue[order.currency] = left
        else:  # as the records would rebuild it: revenue only of orders that stand
            del self.revenue[order.currency]
        for entry in self._recent:
            if entry[1] == order.id:
                self._recent.remove(entry)
                self._recent_units -= entry[2]
                break

    def set(self, orders: int, units: int, revenue: dict[str, int], recent: int) -> tuple[bool, bool]:
        """Take the figures a store shared by several nodes counted (every node's orders): whether
        the totals, and the recent units, changed. The recent units are then that count; the
        orders this object would remember for them are not kept."""
        totals = (orders, units, revenue) != (self.orders, self.units, self.revenue)
        moved = recent != self._recent_units
        self.orders, self.units, self.revenue = orders, units, dict(revenue)
        self._recent.clear()
        self._recent_units = recent
        return totals, moved

    def prune(self, now: float) -> bool:
        """Forget orders older than the window; True if the recent count changed."""
        before = self._recent_units
        while self._recent and self._recent[0][0] <= now - self.window:
            self._recent_units -= self._recent.popleft()[2]
        return self._recent_units != before

    def totals(self) -> dict[str, Any]:
        return {"orders": self.orders, "units": self.units, "revenue": dict(self.revenue)}

    def recent(self) -> dict[str, Any]:
        return {"window": self.window, "units": self._recent_units}
