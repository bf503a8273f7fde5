"""What leaves the commerce domain: errors with stable codes, bus events, CloudEvents envelopes.

The domain never talks to sockets; it returns these values and the I/O edge delivers them. Keeping
them in one module makes the wire vocabulary (codes, event kinds) easy to audit and document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from engine.errors import CodedError

#: Stable error codes; clients switch on these, so they never change meaning.
CODES = frozenset(
    {
        "bad_request",  # malformed or out-of-range input
        "not_found",  # unknown product, tag, sale, reservation or order
        "conflict",  # the request contradicts current state (e.g. stock below units held)
        "full",  # a bounded collection (catalog, tags, sales) is at its configured maximum
        "sold_out",  # not enough units left in the pool
        "limit_reached",  # the per-user limit of a sale would be exceeded
        "sale_not_live",  # tap on a scheduled or ended sale
        "cart_empty",  # checkout with nothing held
    }
)


class DomainError(CodedError):
    """A refused request: `code` is one of CODES, `message` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        super().__init__(code, message)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class DomainEvent(NamedTuple):
    """One room event for the bus.

    `state` events carry a latest value under `key` and may be coalesced (latest wins); discrete
    events (state=False) must each be delivered in order. `user` set means "deliver to this user
    only" (cart and order events are private). A NamedTuple because taps build two per call.
    """

    type: str
    data: dict[str, Any]
    state: bool = False
    key: str | None = None
    user: str | None = None


def state(type_: str, key: str, data: dict[str, Any]) -> DomainEvent:
    """A coalescable value: the bus keeps only the latest per `key`."""
    return DomainEvent(type_, data, True, key)


def discrete(type_: str, data: dict[str, Any], user: str | None = None) -> DomainEvent:
    """An event that must be delivered as is, in order (optionally to one user only)."""
    return DomainEvent(type_, data, False, None, user)


def rfc3339(ts: float) -> str:
    """UTC timestamp with millisecond precision, as CloudEvents' `time` attribute wants."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cloud_event(
    *, room: str, type_: str, event_id: str, subject: str, time: float, data: dict[str, Any]
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode envelope (JSON format).

    `source` is the room's URI-reference, so (source, id) is unique per order transition and
    consumers (and the purchase log itself) can deduplicate on it.
    """
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/livecart/rooms/{room}",
        "type": type_,
        "subject": subject,
        "time": rfc3339(time),
        "datacontenttype": "application/json",
        "data": data,
    }
