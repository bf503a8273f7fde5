"""Carts as viewers see them: reservations at the unit price locked when they were tapped.

The units themselves live in the StockStore; this module only turns held reservations into the
JSON a client renders, and checks the request ids that make taps and checkouts idempotent.
"""

from __future__ import annotations

import re
from typing import Any

from overlays.catalog import Product
from overlays.events import DomainError
from overlays.sales import Sale
from overlays.stock.base import Reservation

#: Client-chosen request ids (UUIDs, counters, order ids): printable ASCII without spaces.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def check_request_id(value: Any) -> str:
    """Client-chosen ids (UUIDs, counters): 1-128 printable ASCII characters, taken verbatim (a
    retry must match exactly). They are kept with the outcome for the hold time, so their size and
    alphabet are bounded. Cheap: it runs on every tap."""
    if type(value) is not str or not _REQUEST_ID.fullmatch(value):
        raise DomainError("bad_request", "request ids are 1-128 printable ASCII characters without spaces")
    return value


def check_user(value: Any) -> str:
    """User ids come from signed tokens (at most 128 characters when minted by the API)."""
    if type(value) is not str or not 0 < len(value) <= 128:
        raise DomainError("bad_request", "user ids are non-empty strings of at most 128 characters")
    return value


def cart_line(reservation: Reservation, product: Product, sale: Sale | None) -> dict[str, Any]:
    """One held reservation, priced as it was tapped (a later price change does not touch it)."""
    unit = reservation.unit_amount
    return {
        "reservation": reservation.id,
        "product": product.id,
        "sale": None if sale is None else sale.id,
        "title": product.title,
        "quantity": reservation.qty,
        "unit_amount": unit,
        "amount": unit * reservation.qty,
        "currency": product.currency,
        "expires_at": reservation.expires_at,
    }


def cart_view(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A cart is single-currency because a room's catalog is (the shop enforces it)."""
    return {
        "lines": lines,
        "quantity": sum(line["quantity"] for line in lines),
        "total": sum(line["amount"] for line in lines),
        "currency": lines[0]["currency"] if lines else None,
    }
