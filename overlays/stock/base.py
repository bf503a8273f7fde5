"""The StockStore interface: atomic unit accounting for stock pools (a product's stock, a sale's quantity).

Every method is one atomic step (one Lua script on Redis, one critical section without awaits in
memory), scoped to a room so a room's keys can share a Redis Cluster slot. Per pool the store keeps
`reserved + sold + available == quantity` with `available >= 0`, and per (pool, user) the units
held (reserved + sold), which a sale's per-user limit bounds. Every figure comes with the pool's
`version`, which grows with each change of its counters: calls whose replies come back out of
order (a backend that suspends) can tell the newer figure from the older. Results are NamedTuples: immutable
(an idempotent replay hands out the same value) and cheap to build on the tap hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

#: `turned` values: the call moved the pool's availability to 0, back from 0, or neither. A store
#: shared by several nodes (Redis) reports them, decided in the same atomic step as the units, so
#: that of all the nodes exactly one announces each transition; a store of one process leaves
#: them None and the shop decides from the figures it handles.
EMPTIED, REFILLED, UNTURNED = 1, -1, 0


class Counters(NamedTuple):
    quantity: int
    available: int
    reserved: int
    sold: int
    version: int
    turned: int | None = None


class Reservation(NamedTuple):
    """Units of one pool held in a user's cart until `expires_at` (or sold, once committed), at
    the unit price (minor units) locked when they were tapped: what the buyer saw is what they pay."""

    id: str
    pool: str
    user: str
    qty: int
    expires_at: float
    unit_amount: int


class ReserveResult(NamedTuple):
    """`code` is None on success, else sold_out, limit_reached, not_found or bad_request,
    sale_not_live for a closed pool (with the `message` given to `close`), or the code of a
    refusal the caller decided itself (`refuse`), which comes with its `message`.
    `available` is the pool's availability after the call (0 when the pool is unknown).
    `replay` marks the first result handed out again for a repeated request id: nothing changed,
    and `available` is a figure from the past (not to be published). `totals` is the quantity and
    total (minor units) of the user's cart lines unexpired at the call's `now`, right after the
    call, when the result holds a reservation and the backend counted them in the same step (a
    networked store saves a round trip), else None (call `cart`)."""

    code: str | None
    reservation: Reservation | None
    available: int
    version: int
    replay: bool = False
    message: str | None = None
    totals: tuple[int, int] | None = None
    turned: int | None = None

    @property
    def ok(self) -> bool:
        return self.code is None


class Returned(NamedTuple):
    """Units that went back to their pool, and the pool's availability afterwards."""

    reservation: Reservation
    available: int
    version: int
    turned: int | None = None


class StockStore(Protocol):
    async def define(
        self, room: str, pool: str, quantity: int, sold_by: Mapping[str, int] | None = None
    ) -> Counters:
        """Create a pool or change its quantity. Raises DomainError("conflict") if quantity would
        drop below reserved + sold. With `sold_by` (user -> units sold, rebuilt from orders on
        start) the pool is reset to those sales and no reservations."""
        ...

    async def drop(self, room: str, pool: str) -> None:
        """Forget a pool; DomainError("conflict") while units are reserved in it. Idempotent."""
        ...

    async def reserve(
        self,
        room: str,
        pool: str,
        user: str,
        request_id: str,
        qty: int,
        per_user_limit: int | None,
        expires_at: float,
        unit_amount: int,
        now: float | None = None,
    ) -> ReserveResult:
        """Hold qty units for user at `unit_amount` each, idempotent on (room, user, request_id):
        a repeat returns the first result with `replay` set, until `expires_at` of the first
        call has passed (refusals too), whatever other users do meanwhile. A backend may bound
        the requests it remembers per user (that user's oldest go first), never across users.
        This memory is the only one of tap outcomes: it is atomic with the units, so a retry that
        races its original (a backend whose calls suspend) cannot reserve twice. With `now`, a
        backend may count the cart's `totals` at that time in the same step."""
        ...

    async def refuse(
        self, room: str, user: str, request_id: str, code: str, message: str, expires_at: float,
        now: float | None = None,
    ) -> ReserveResult:
        """A tap the caller refused before any pool was touched (the sale is not live, the item is
        unknown, the request is malformed), kept in the same memory as `reserve`'s results: the
        first result of (room, user, request_id) with `replay` set if the id was seen (a retry of
        a tap that reserved gets its reservation back, whatever the caller decides now), else this
        refusal, remembered until `expires_at`."""
        ...

    async def release(self, room: str, user: str, reservation_id: str) -> Returned | None:
        """Give back one of the user's reservations; None if it is not (or no longer) held."""
        ...

    async def expire(self, room: str, now: float) -> list[Returned]:
        """Give back every reservation of the room with expires_at <= now (and forget the request
        ids remembered until then)."""
        ...

    async def commit(self, room: str, user: str, now: float, request_id: str | None = None) -> list[Reservation]:
        """Turn the user's unexpired reservations into sold units; returns them (the order lines).
        With `request_id`, the user's last non-empty commit is remembered until its lines' hold
        would have ended (or `restore` undoes it): the same request id again returns the same
        lines and sells nothing more, so a checkout whose reply was lost (a networked store) can
        be retried."""
        ...

    async def restore(self, room: str, lines: list[Reservation]) -> None:
        """Undo `commit`: turn the units of `lines` (as commit returned them) back into the same
        reservations in their users' carts, with the same ids and expiry, and forget those users'
        remembered commits. For an order that could not be written; lines of pools that no longer
        exist are skipped."""
        ...

    async def refund(self, room: str, lines: list[Reservation]) -> dict[str, Counters]:
        """Return sold units (a cancelled order) to their pools; pool -> counters afterwards.
        Lines of pools that no longer exist are skipped. The caller calls this once per order."""
        ...

    async def close_pool(self, room: str, pool: str, message: str) -> None:
        """Close a pool to taps (its sale was ended by hand): `reserve` then refuses it with
        code ``sale_not_live`` and `message`, in its own atomic step, on every node sharing the
        store at once. Units already held stay in their carts. Idempotent; a pool that does not
        exist is left alone."""
        ...

    async def counters(self, room: str, pool: str) -> Counters | None: ...

    async def cart(self, room: str, user: str) -> list[Reservation]:
        """The user's reservations in the room, oldest first (expired ones until expire runs)."""
        ...
