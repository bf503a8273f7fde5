"""In-process StockStore: the embedded default. Each method runs to completion without awaiting,
so on one event loop every call is atomic."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping

from overlays.events import DomainError
from overlays.idempotency import RequestMemory
from overlays.stock.base import Counters, Reservation, ReserveResult, Returned


class _Pool:
    __slots__ = ("closed", "quantity", "reserved", "sold", "held", "version")

    def __init__(self, quantity: int, sold: int = 0, held: dict[str, int] | None = None) -> None:
        self.quantity = quantity
        self.reserved = 0
        self.sold = sold
        self.held: dict[str, int] = held or {}  # user -> reserved + sold
        self.version = 1  # bumped by every change of the counters
        self.closed: str | None = None  # the refusal's message once closed to taps

    @property
    def available(self) -> int:
        return self.quantity - self.reserved - self.sold

    def counters(self) -> Counters:
        return Counters(self.quantity, self.available, self.reserved, self.sold, self.version)

    def add_held(self, user: str, delta: int) -> None:
        left = self.held.get(user, 0) + delta
        if left:
            self.held[user] = left
        else:
            self.held.pop(user, None)


class _Cart:
    """One user's reservations in one room, with their quantity and total kept as they change, so
    a tap's answer carries the cart's totals without a pass over its lines. The totals count every
    line held; they are the answer's while no line has passed its expiry (``soonest``), which in a
    storm is always: after that, until the room's tick expires the line, the caller counts."""

    __slots__ = ("lines", "quantity", "total", "soonest")

    def __init__(self) -> None:
        self.lines: dict[str, Reservation] = {}
        self.quantity = 0
        self.total = 0
        self.soonest = float("inf")  # the earliest expiry of a line held

    def add(self, reservation: Reservation) -> None:
        self.lines[reservation.id] = reservation
        self.quantity += reservation.qty
        self.total += reservation.qty * reservation.unit_amount
        if reservation.expires_at < self.soonest:
            self.soonest = reservation.expires_at

    def remove(self, reservation: Reservation) -> None:
        del self.lines[reservation.id]
        self.quantity -= reservation.qty
        self.total -= reservation.qty * reservation.unit_amount
        if reservation.expires_at <= self.soonest:
            self.soonest = min((r.expires_at for r in self.lines.values()), default=float("inf"))

    def totals(self, now: float | None) -> tuple[int, int] | None:
        """The quantity and total of the lines unexpired at ``now``, if no line has expired yet."""
        return (self.quantity, self.total) if now is not None and now < self.soonest else None


def _replayed(result: ReserveResult) -> ReserveResult:
    """The remembered result, marked as handed out again (built directly: `_replace` costs twice
    as much, and every retry pays it)."""
    return ReserveResult(result.code, result.reservation, result.available, result.version, True, result.message)


class MemoryStockStore:
    """Tap results (`reserve`'s and `refuse`'s) are remembered per room until their hold time
    ends, at most `max_user_requests` per user and room (see overlays.idempotency for the bound)."""

    def __init__(self, max_user_requests: int = 1000) -> None:
        self.max_user_requests = max_user_requests
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._reservations: dict[str, tuple[str, Reservation]] = {}  # id -> (room, reservation)
        self._carts: dict[tuple[str, str], _Cart] = {}
        self._expiry: dict[str, list[tuple[float, str]]] = {}  # room -> heap, lazily cleaned
        self._requests: dict[str, RequestMemory[ReserveResult]] = {}  # room -> remembered results
        # (room, user) -> their last commit with a request id, and per room when each is forgotten
        self._commits: dict[tuple[str, str], tuple[str, list[Reservation]]] = {}
        self._commit_expiry: dict[str, list[tuple[float, str, str]]] = {}
        self._ids = itertools.count(1)

    async def define(
        self, room: str, pool: str, quantity: int, sold_by: Mapping[str, int] | None = None
    ) -> Counters:
        if quantity < 0:
            raise DomainError("bad_request", "quantity must not be negative")
        key = (room, pool)
        current = self._pools.get(key)
        if sold_by is not None:
            sold = sum(sold_by.values())
            if current is not None and current.reserved:
                raise DomainError("conflict", "cannot reset a pool with reserved units")
            if sold > quantity:
                raise DomainError("conflict", f"{sold} units sold exceed quantity {quantity}")
            version, closed = (current.version + 1, current.closed) if current is not None else (1, None)
            current = self._pools[key] = _Pool(quantity, sold, {u: n for u, n in sold_by.items() if n})
            current.version, current.closed = version, closed
        elif current is None:
            current = self._pools[key] = _Pool(quantity)
        else:
            if quantity < current.reserved + current.sold:
                raise DomainError(
                    "conflict", f"{current.reserved + current.sold} units are held or sold; quantity too low"
                )
            if quantity != current.quantity:
                current.quantity = quantity
                current.version += 1
        return current.counters()

    async def drop(self, room: str, pool: str) -> None:
        current = self._pools.get((room, pool))
        if current is None:
            return
        if current.reserved:
            raise DomainError("conflict", "units of this pool are in carts")
        del self._pools[(room, pool)]

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
        memory = self._memory(room)
        result = memory.get(user, request_id)
        if result is not None:
            return _replayed(result)
        current = self._pools.get((room, pool))
        if current is None:
            result = ReserveResult("not_found", None, 0, 0)
        else:
            available = current.quantity - current.reserved - current.sold
            if current.closed is not None:
                result = ReserveResult("sale_not_live", None, available, current.version, False, current.closed)
            elif qty < 1:
                result = ReserveResult("bad_request", None, available, current.version)
            elif qty > available:
                result = ReserveResult("sold_out", None, available, current.version)
            elif per_user_limit is not None and current.held.get(user, 0) + qty > per_user_limit:
                result = ReserveResult("limit_reached", None, available, current.version)
            else:
                reservation, cart = self._hold(room, current, pool, user, qty, expires_at, unit_amount)
                result = ReserveResult(None, reservation, available - qty, current.version,
                                       totals=cart.totals(now))
        memory.remember(user, request_id, result, expires_at)
        return result

    async def refuse(
        self, room: str, user: str, request_id: str, code: str, message: str, expires_at: float,
        now: float | None = None,
    ) -> ReserveResult:
        memory = self._memory(room)
        result = memory.get(user, request_id)
        if result is not None:
            return _replayed(result)
        result = ReserveResult(code, None, 0, 0, False, message)
        memory.remember(user, request_id, result, expires_at)
        return result

    def _memory(self, room: str) -> RequestMemory[ReserveResult]:
        memory = self._requests.get(room)
        if memory is None:
            memory = self._requests[room] = RequestMemory(self.max_user_requests)
        return memory

    def _hold(
        self, room: str, current: _Pool, pool: str, user: str, qty: int, expires_at: float, unit_amount: int
    ) -> tuple[Reservation, _Cart]:
        reservation = Reservation(f"r{next(self._ids)}", pool, user, qty, expires_at, unit_amount)
        current.reserved += qty
        current.version += 1
        current.held[user] = current.held.get(user, 0) + qty
        self._reservations[reservation.id] = (room, reservation)
        cart = self._carts.get((room, user))
        if cart is None:
            cart = self._carts[(room, user)] = _Cart()
        cart.add(reservation)
        heap = self._expiry.get(room)
        if heap is None:
            heap = self._expiry[room] = []
        heapq.heappush(heap, (expires_at, reservation.id))
        return reservation, cart

    def _unhold(self, room: str, reservation: Reservation) -> Returned:
        """Remove a live reservation and give its units back."""
        del self._reservations[reservation.id]
        cart = self._carts[(room, reservation.user)]
        cart.remove(reservation)
        if not cart.lines:
            del self._carts[(room, reservation.user)]
        current = self._pools[(room, reservation.pool)]  # drop() refuses pools with reservations
        current.reserved -= reservation.qty
        current.version += 1
        current.add_held(reservation.user, -reservation.qty)
        return Returned(reservation, current.available, current.version)

    async def release(self, room: str, user: str, reservation_id: str) -> Returned | None:
        found = self._reservations.get(reservation_id)
        if found is None or found[0] != room or found[1].user != user:
            return None
        return self._unhold(room, found[1])

    async def expire(self, room: str, now: float) -> list[Returned]:
        memory = self._requests.get(room)
        if memory is not None:
            memory.forget(now)
            if not memory.pending:
                del self._requests[room]
        commits = self._commit_expiry.get(room)
        while commits and commits[0][0] <= now:
            _, user, request_id = heapq.heappop(commits)
            last = self._commits.get((room, user))
            if last is not None and last[0] == request_id:
                del self._commits[(room, user)]
        if commits is not None and not commits:
            del self._commit_expiry[room]
        heap = self._expiry.get(room)
        returned: list[Returned] = []
        while heap and heap[0][0] <= now:
            _, reservation_id = heapq.heappop(heap)
            found = self._reservations.get(reservation_id)
            if found is not None:
                returned.append(self._unhold(room, found[1]))
        if heap is not None and not heap:
            del self._expiry[room]
        return returned

    async def commit(self, room: str, user: str, now: float, request_id: str | None = None) -> list[Reservation]:
        if request_id is not None:
            last = self._commits.get((room, user))
            if last is not None and last[0] == request_id:
                return list(last[1])
        cart = self._carts.get((room, user))
        if cart is None:
            return []
        lines = [r for r in cart.lines.values() if r.expires_at > now]
        if request_id is not None and lines:
            self._commits[(room, user)] = (request_id, lines)
            until = max(r.expires_at for r in lines)
            heapq.heappush(self._commit_expiry.setdefault(room, []), (until, user, request_id))
        for reservation in lines:
            cart.remove(reservation)
            del self._reservations[reservation.id]
            current = self._pools[(room, reservation.pool)]
            current.reserved -= reservation.qty
            current.sold += reservation.qty
            current.version += 1
        if not cart.lines:
            del self._carts[(room, user)]
        return lines

    async def restore(self, room: str, lines: list[Reservation]) -> None:
        for reservation in lines:
            self._commits.pop((room, reservation.user), None)
            current = self._pools.get((room, reservation.pool))
            if current is None:
                continue
            current.sold -= reservation.qty
            current.reserved += reservation.qty  # `held` already counts them (reserved + sold)
            current.version += 1
            self._reservations[reservation.id] = (room, reservation)
            cart = self._carts.get((room, reservation.user))
            if cart is None:
                cart = self._carts[(room, reservation.user)] = _Cart()
            cart.add(reservation)
            heapq.heappush(self._expiry.setdefault(room, []), (reservation.expires_at, reservation.id))

    async def refund(self, room: str, lines: list[Reservation]) -> dict[str, Counters]:
        after: dict[str, Counters] = {}
        for line in lines:
            current = self._pools.get((room, line.pool))
            if current is None:
                continue
            back = min(line.qty, current.sold)  # never drive sold negative, even on a misuse
            current.sold -= back
            current.version += 1
            current.add_held(line.user, -back)
            after[line.pool] = current.counters()
        return after

    async def close_pool(self, room: str, pool: str, message: str) -> None:
        current = self._pools.get((room, pool))
        if current is not None and current.closed is None:
            current.closed = message

    async def counters(self, room: str, pool: str) -> Counters | None:
        current = self._pools.get((room, pool))
        return None if current is None else current.counters()

    async def cart(self, room: str, user: str) -> list[Reservation]:
        cart = self._carts.get((room, user))
        return [] if cart is None else list(cart.lines.values())
