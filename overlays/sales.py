"""Flash sales: a product at a sale price, a quantity of its own, a time window and a per-user limit.

State is a pure function of the clock and the pool's availability:
scheduled -> live -> sold_out (live with nothing left, may return to live when units come back)
-> ended. `SaleBook.transitions(now)` reports the clock-driven changes since the last call so the
I/O edge can announce them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from engine.errors import shown
from overlays.catalog import MAX_PRICE, MAX_STOCK, Product, check_float, check_id, check_int
from overlays.events import DomainError

MAX_DURATION = 7 * 24 * 3600.0
MAX_PER_USER = 1000
SCHEDULED, LIVE, SOLD_OUT, ENDED = "scheduled", "live", "sold_out", "ended"


@dataclass(slots=True)
class Sale:
    """`ended_at` is set when a host ends the sale early; `pool` names its stock pool."""

    id: str
    product_id: str
    price: int
    currency: str
    quantity: int
    starts_at: float
    ends_at: float
    per_user_limit: int
    pool: str
    ended_at: float | None = None

    @classmethod
    def parse(
        cls,
        sale_id: str,
        product: Product,
        fields: Mapping[str, Any],
        now: float,
        pool: str,
    ) -> Sale:
        """Validate a host's request. `starts_at` defaults to now; the end is `ends_at` or
        start + `duration` (seconds), and must lie in the future."""
        starts_at = fields.get("starts_at")
        starts_at = now if starts_at is None else check_float("starts_at", starts_at, 0.0, now + MAX_DURATION)
        ends_at, duration = fields.get("ends_at"), fields.get("duration")
        if (ends_at is None) == (duration is None):
            raise DomainError("bad_request", "give exactly one of ends_at and duration")
        if duration is not None:
            ends_at = starts_at + check_float("duration", duration, 1.0, MAX_DURATION)
        else:
            ends_at = check_float("ends_at", ends_at, starts_at, starts_at + MAX_DURATION)
        if ends_at <= max(starts_at, now):
            raise DomainError("bad_request", "the sale must end after it starts and in the future")
        return cls(
            id=check_id("sale id", sale_id),
            product_id=product.id,
            price=check_int("price", fields.get("price"), 0, MAX_PRICE),
            currency=product.currency,
            quantity=check_int("quantity", fields.get("quantity"), 1, MAX_STOCK),
            starts_at=starts_at,
            ends_at=ends_at,
            per_user_limit=check_int("per_user_limit", fields.get("per_user_limit", 1), 1, MAX_PER_USER),
            pool=pool,
        )

    def phase(self, now: float) -> str:
        """scheduled, live or ended by the clock alone (sold out needs the pool)."""
        if self.ended_at is not None or now >= self.ends_at:
            return ENDED
        return SCHEDULED if now < self.starts_at else LIVE

    def state(self, now: float, available: int) -> str:
        phase = self.phase(now)
        return SOLD_OUT if phase == LIVE and available == 0 else phase

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SaleBook:
    """A room's sales and the phase last announced for each, bounded by `max_sales`."""

    def __init__(self, max_sales: int) -> None:
        self.max_sales = max_sales
        self._sales: dict[str, Sale] = {}
        self._announced: dict[str, str] = {}

    def __iter__(self) -> Iterator[Sale]:
        return iter(self._sales.values())

    def __len__(self) -> int:
        return len(self._sales)

    def __contains__(self, sale_id: str) -> bool:
        return sale_id in self._sales

    def find(self, sale_id: str) -> Sale | None:
        return self._sales.get(sale_id)

    def get(self, sale_id: str) -> Sale:
        sale = self._sales.get(sale_id)
        if sale is None:
            raise DomainError("not_found", f"no sale {shown(sale_id)}")
        return sale

    def add(self, sale: Sale, now: float, announced: str | None = None) -> None:
        """Add a sale whose current phase (or `announced`) is taken as already announced."""
        if sale.id in self._sales:
            raise DomainError("conflict", f"sale {sale.id!r} exists")
        if len(self._sales) >= self.max_sales:
            raise DomainError("full", f"a room keeps at most {self.max_sales} sales")
        self._sales[sale.id] = sale
        self._announced[sale.id] = sale.phase(now) if announced is None else announced

    def announced(self, sale_id: str) -> str | None:
        """The phase last announced for the sale (None: no such sale)."""
        return self._announced.get(sale_id)

    def discard(self, sale_id: str) -> None:
        del self._sales[sale_id]
        del self._announced[sale_id]

    def end(self, sale_id: str, now: float) -> bool:
        """End early; False when it had already ended (ending is idempotent)."""
        sale = self.get(sale_id)
        if sale.phase(now) == ENDED:
            self._announced[sale_id] = ENDED
            return False
        sale.ended_at = now
        self._announced[sale_id] = ENDED
        return True

    def transitions(self, now: float) -> list[tuple[Sale, str]]:
        """(sale, new phase) for each sale whose clock phase moved since last announced. A sale
        that started and ended between two calls reports only `ended`."""
        moved = []
        for sale in self._sales.values():
            phase = sale.phase(now)
            if phase != self._announced[sale.id]:
                self._announced[sale.id] = phase
                moved.append((sale, phase))
        return moved
