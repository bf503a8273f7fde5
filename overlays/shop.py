"""The per-room commerce facade the HTTP and websocket handlers call.

Each mutating call validates, applies the change through the StockStore (atomic units), writes what
must survive a restart through the RecordStore (an order together with its purchase-log entry), and
returns an `Outcome`: the result for the caller plus the DomainEvents to publish. Failures raise
DomainError. Time comes from the injected clock; `tick()` advances clock-driven state (reservation
expiry, sale start and end, the "bought in the last minute" window) and returns its events. No sockets,
no asyncio here: the awaits are only the stores' interface.

Events (DomainEvent.type; S = state, coalesced per key; D = discrete; U = to one user only):
  product.put D, product.removed D, product.stock S (key product.stock:{id}), tag.pinned D,
  tag.unpinned D, sale.scheduled D, sale.started D, sale.sold_out D, sale.resumed D, sale.ended D,
  sale.remaining S (key sale.remaining:{id}), cart.added DU, cart.removed DU, cart.expired DU,
  order.placed DU, order.paid DU, order.cancelled DU, sales.totals S, sales.recent S.
Purchase log (CloudEvents type): livecart.order.placed / .paid / .cancelled, id "{order}.{status}".
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from engine.errors import shown
from overlays.carts import cart_line, cart_view, check_request_id, check_user
from overlays.catalog import MAX_CATALOG_BYTES, Catalog, Product, check_id
from overlays.events import DomainError, DomainEvent, discrete, state
from overlays.idempotency import RequestMemory
from overlays.orders import CANCELLED, PAID, PLACED, Order, OrderLine, SalesStats
from overlays.records import RecordStore
from overlays.records.base import SalesFigures, SharedRecords
from overlays.sales import ENDED, LIVE, SCHEDULED, Sale, SaleBook
from overlays.stock.base import EMPTIED, Reservation, StockStore
from overlays.tags import Tag, TagBoard

T = TypeVar("T")

_STOCK_MESSAGES = {
    "sold_out": "not enough units left",
    "limit_reached": "the per-user limit of this sale is reached",
    "not_found": "this item is no longer on offer",
    "bad_request": "quantity must be at least 1",
}
#: The store's refusals as values, built once: they are returned (never raised), so sharing is safe.
_STOCK_REFUSALS = {code: DomainError(code, message) for code, message in _STOCK_MESSAGES.items()}


@dataclass(frozen=True, slots=True)
class ShopConfig:
    """Limits of one room's shop (DESIGN principle 4: everything bounded)."""

    hold_seconds: float = 600.0  # how long a tap holds units in a cart
    max_products: int = 500
    max_catalog_bytes: int = MAX_CATALOG_BYTES  # the products' encoded size, so a snapshot fits a send queue
    max_tags: int = 8  # pinned at once
    max_sales: int = 100  # kept per room; ended sales without held units are pruned to make room
    max_tap_qty: int = 20
    user_requests: int = 1000  # refused checkouts kept per user for retries, each for the hold time
    recent_orders: int = 10_000  # orders kept for "N bought in the last minute"
    proof_window: float = 60.0  # seconds of "N bought in the last minute"
    auto_confirm: bool = False  # demos: orders are paid as soon as they are placed


class Outcome(NamedTuple, Generic[T]):
    result: T
    events: list[DomainEvent]


def _token() -> str:
    return secrets.token_hex(6)


class Shop:
    def __init__(
        self,
        room: str,
        host: str,
        *,
        stock: StockStore,
        records: RecordStore,
        config: ShopConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.room, self.host = room, host
        self.config = config or ShopConfig()
        self._stock, self._records, self._clock = stock, records, clock
        self._catalog = Catalog(self.config.max_products, self.config.max_catalog_bytes)
        self._tags = TagBoard(self.config.max_tags)
        self._sales = SaleBook(self.config.max_sales)
        self._pools: dict[str, tuple[str, str | None]] = {}  # pool -> (product id, sale id or None)
        self._sold_out: set[str] = set()  # sales announced sold out
        # (sale id, phase) -> the refusal of a tap outside the sale's live time, made once: a storm
        # opens with thousands of them. Returned, never raised, so sharing one is safe.
        self._not_live: dict[tuple[str, str], DomainError] = {}
        self._figures: dict[str, int] = {}  # pool -> store version of the newest figure handled
        # Refused checkouts for retries, each kept for the hold time (a placed order is found in the
        # records; taps are remembered by the stock store).
        self._checkouts: RequestMemory[DomainError] = RequestMemory(self.config.user_requests)
        self.oversold: dict[str, tuple[int, int]] = {}  # pool -> (sold, quantity), found by load()
        self.stats = SalesStats(self.config.proof_window, self.config.recent_orders)
        # Records several nodes share count the room's sales themselves (every node's orders): the
        # stats are then taken from them (`take_figures`, on the room clock), never counted here.
        self._shared_figures = isinstance(records, SharedRecords)
        # The public view (every client's snapshot, the REST lists) is built once per change: every
        # change clients see comes with events, so whatever returns events drops it.
        self._view: dict[str, Any] | None = None
        self._version = 0

    @property
    def version(self) -> int:
        """Grows with every change clients see (the view is rebuilt after it)."""
        return self._version

    # -- start --------------------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild from the records after a (re)start: catalog, pinned tags, sales, sold units per pool (units
        that were only reserved return to stock), totals; and append to the purchase log any
        order transition a database written by an older version left unlogged.

        A pool whose orders hold more units than it offers (a data directory once served by two
        processes) is not refused: it loads sold out, its orders intact, and is listed in
        `oversold` (pool -> (sold, quantity)) for the operator."""
        now = self._clock()
        for data in await self._records.products(self.room):
            product = Product(**data)
            self._catalog.put(product)
            self._pools[product.pool] = (product.id, None)
        for data in await self._records.tags(self.room):
            tag = Tag(**data)
            if self._catalog.find(tag.product_id) is not None:  # a crash may have cut a removal short
                self._tags.pin(tag)
        for data in await self._records.sales(self.room):
            sale = Sale(**data)
            self._sales.add(sale, now)
            self._pools[sale.pool] = (sale.product_id, sale.id)
        sold = await self._records.sold(self.room)
        for pool, (product_id, sale_id) in self._pools.items():
            quantity = (
                self._catalog.get(product_id).stock if sale_id is None else self._sales.get(sale_id).quantity
            )
            units = sum(sold.get(pool, {}).values())
            if units > quantity:
                self.oversold[pool] = (units, quantity)
                quantity = units
            try:
                counters = await self._stock.define(self.room, pool, quantity, sold.get(pool, {}))
            except DomainError as error:
                if error.code != "conflict":
                    raise
                # A shared store (Redis) that outlived this process still holds carts of this
                # pool: its counts are current (orders were counted there as they were made).
                counters = await self._stock.define(self.room, pool, quantity)
            if (
                sale_id is not None
                and counters.available == 0
                and self._sales.get(sale_id).phase(now) == LIVE
            ):
                self._sold_out.add(sale_id)
        if self._shared_figures:
            assert isinstance(self._records, SharedRecords)
            self.stats.set(*(await self._records.figures([self.room], now - self.config.proof_window))[0])
        else:
            self.stats.load(*await self._records.totals(self.room))
        for data, logged in await self._records.unlogged_orders(self.room):
            order = Order.from_dict(data)
            if logged is None:
                await self._append(order, PLACED)
            if order.status != PLACED:
                await self._append(order, order.status)
        self._changed()

    async def reload_offer(self) -> None:
        """Read the catalog, pinned tags and sales again from the records, which another node
        sharing them changed (overlays.runtime catches up). Stock is not touched: its counts live
        in the shared store, defined by the node that made the change. No events: that node
        published them on the shared bus. A sale unchanged since it was known keeps the phase this
        node last announced (its clock may still owe the announcement); a changed or new one takes
        its current phase as announced, by the node that changed it."""
        products, tags, sales = (
            await self._records.products(self.room), await self._records.tags(self.room),
            await self._records.sales(self.room))
        now = self._clock()
        catalog = Catalog(self.config.max_products, self.config.max_catalog_bytes)
        pools: dict[str, tuple[str, str | None]] = {}
        for data in products:
            product = Product(**data)
            catalog.put(product)
            pools[product.pool] = (product.id, None)
        board = TagBoard(self.config.max_tags)
        for data in tags:
            tag = Tag(**data)
            if catalog.find(tag.product_id) is not None:
                board.pin(tag)
        book = SaleBook(self.config.max_sales)
        for data in sales:
            sale = Sale(**data)
            known = self._sales.find(sale.id)
            book.add(sale, now, self._sales.announced(sale.id) if known is not None and known == sale else None)
            pools[sale.pool] = (sale.product_id, sale.id)
        self._catalog, self._tags, self._sales, self._pools = catalog, board, book, pools
        self._sold_out &= {sale.id for sale in book}
        self._figures = {pool: version for pool, version in self._figures.items() if pool in pools}
        self._not_live.clear()
        self._changed()

    def knows(self, product_id: Any, sale_id: Any) -> bool:
        """Whether a tap's product or sale is in this shop (else a node sharing the records may
        have made it since this one read them)."""
        if sale_id is not None:
            return type(sale_id) is str and self._sales.find(sale_id) is not None
        return type(product_id) is str and self._catalog.find(product_id) is not None

    # -- catalog and tags (hosts) -------------------------------------------------------------

    async def put_product(self, fields: Mapping[str, Any]) -> Outcome[dict[str, Any]]:
        """Add a product or update some of its fields; `stock` is the total quantity offered
        (sold units included) and cannot go below the units sold and held."""
        if not isinstance(fields, Mapping):
            raise DomainError("bad_request", "a product is an object")
        product_id = check_id("id", fields.get("id"))
        current = self._catalog.find(product_id)
        if current is None:
            product = Product.parse(fields, f"p:{product_id}:{_token()}")
        else:
            product = Product.parse({**current.to_dict(), **fields}, current.pool)
        if any(p.currency != product.currency for p in self._catalog if p.id != product_id):
            raise DomainError("conflict", "all products of a room share one currency")
        if current is None:
            self._catalog.check_space()
        elif product.currency != current.currency:
            await self._check_currency_change(current)
        self._catalog.check_fits(product)
        # The stock first: until it is accepted, taps keep seeing (and locking) the current price.
        counters = await self._stock.define(self.room, product.pool, product.stock)
        self._catalog.put(product)
        self._pools[product.pool] = (product.id, None)  # with the product: taps find both or neither
        self._changed()  # now, not only with the outcome: the records' write below may fail
        await self._records.put_product(self.room, product.to_dict())
        view = {**self._catalog.public(product.id), "available": counters.available}
        stock = self._stock_events(product.pool, counters.available, counters.version, turned=counters.turned)
        return self._outcome(view, [discrete("product.put", view), *stock])

    async def _check_currency_change(self, product: Product) -> None:
        """Prices locked in carts and sales are in the product's currency: it stays while either exists."""
        counters = await self._stock.counters(self.room, product.pool)
        if (counters is not None and counters.reserved) or any(s.product_id == product.id for s in self._sales):
            raise DomainError("conflict", "the currency cannot change while the product has sales or units in carts")

    async def remove_product(self, product_id: str) -> Outcome[dict[str, Any]]:
        """Refused (conflict) while the product has units in carts or a sale not yet ended."""
        product = self._catalog.get(check_id("product id", product_id))
        now = self._clock()
        sales = [s for s in self._sales if s.product_id == product.id]
        for sale in sales:
            counters = await self._stock.counters(self.room, sale.pool)
            if sale.phase(now) != ENDED or (counters is not None and counters.reserved):
                raise DomainError("conflict", f"sale {sale.id} of this product is active or in carts")
        await self._stock.drop(self.room, product.pool)
        for sale in sales:
            await self._drop_sale(sale)
        self._catalog.remove(product.id)
        self._changed()
        del self._pools[product.pool]
        self._figures.pop(product.pool, None)
        await self._records.delete_product(self.room, product.id)
        events = [discrete("product.removed", {"product": product.id})]
        for tag in self._tags.unpin_product(product.id):
            await self._records.delete_tag(self.room, tag.id)
            events.append(discrete("tag.unpinned", {"tag": tag.id}))
        return self._outcome({"product": product.id}, events)

    async def pin(self, fields: Mapping[str, Any]) -> Outcome[dict[str, Any]]:
        """Pin a tag (or move one already pinned, same id) over the video."""
        if not isinstance(fields, Mapping):
            raise DomainError("bad_request", "a tag is an object")
        tag = Tag.parse(fields)
        self._catalog.get(tag.product_id)
        self._tags.pin(tag)
        view = tag.to_dict()
        await self._records.put_tag(self.room, view)
        return self._outcome(view, [discrete("tag.pinned", view)])

    async def unpin(self, tag_id: str) -> Outcome[dict[str, Any]]:
        tag = self._tags.unpin(check_id("tag id", tag_id))
        await self._records.delete_tag(self.room, tag.id)
        return self._outcome({"tag": tag.id}, [discrete("tag.unpinned", {"tag": tag.id})])

    # -- sales (hosts) ------------------------------------------------------------------------

    async def start_sale(self, fields: Mapping[str, Any]) -> Outcome[dict[str, Any]]:
        """Create a flash sale: product_id, price, quantity, per_user_limit (default 1), ends_at or
        duration, optional id, optional starts_at (in the future: the sale is scheduled)."""
        if not isinstance(fields, Mapping):
            raise DomainError("bad_request", "a sale is an object")
        now = self._clock()
        product = self._catalog.get(check_id("product id", fields.get("product_id")))
        sale_id = check_id("sale id", fields.get("id") or f"s_{_token()}")
        sale = Sale.parse(sale_id, product, fields, now, f"s:{sale_id}:{_token()}")
        if sale.id in self._sales:
            raise DomainError("conflict", f"sale {sale.id!r} exists")
        if len(self._sales) >= self._sales.max_sales:
            await self._prune_sales(now)
        # The sale and its pool enter this copy together: a tap that finds the sale while the
        # writes below wait (or after one failed) can always name its line.
        self._sales.add(sale, now)
        self._pools[sale.pool] = (product.id, sale.id)
        self._changed()
        counters = await self._stock.define(self.room, sale.pool, sale.quantity)
        await self._records.put_sale(self.room, sale.to_dict())
        view = self._sale_view(sale, counters.available, now)
        kind = "sale.started" if sale.phase(now) == LIVE else "sale.scheduled"
        return self._outcome(
            view, [discrete(kind, view),
                   *self._stock_events(sale.pool, counters.available, counters.version, now, counters.turned)]
        )

    async def end_sale(self, sale_id: str) -> Outcome[dict[str, Any]]:
        """End a sale now (idempotent). Units already in carts stay checkout-able until they expire."""
        sale = self._sales.get(check_id("sale id", sale_id))
        now = self._clock()
        changed = self._sales.end(sale.id, now)
        view = self._sale_view(sale, await self._available(sale.pool), now)
        if not changed:
            return Outcome(view, [])
        self._sold_out.discard(sale.id)
        # Closed in the stock store first: a node that has not read the end yet refuses taps at once.
        await self._stock.close_pool(self.room, sale.pool, f"sale {sale.id} is {ENDED}")
        await self._records.put_sale(self.room, sale.to_dict())
        return self._outcome(view, [discrete("sale.ended", view)])

    async def _prune_sales(self, now: float) -> None:
        for sale in list(self._sales):
            counters = await self._stock.counters(self.room, sale.pool)
            if sale.phase(now) == ENDED and (counters is None or not counters.reserved):
                await self._drop_sale(sale)

    async def _drop_sale(self, sale: Sale) -> None:
        await self._stock.drop(self.room, sale.pool)
        self._sales.discard(sale.id)
        self._changed()
        self._pools.pop(sale.pool, None)
        self._figures.pop(sale.pool, None)
        self._sold_out.discard(sale.id)
        for phase in (SCHEDULED, ENDED):
            self._not_live.pop((sale.id, phase), None)
        await self._records.delete_sale(self.room, sale.id)

    # -- carts (viewers) ----------------------------------------------------------------------

    async def tap(
        self,
        user: str,
        request_id: str,
        *,
        product_id: str | None = None,
        sale_id: str | None = None,
        qty: int = 1,
    ) -> Outcome[dict[str, Any]]:
        """Reserve qty units of a product, or of a live sale, into the user's cart for the hold
        time. Idempotent on (user, request_id): a retry gets the first outcome (the same
        reservation, or the same error) again, with no events. Raises the refusal; see
        `tap_or_refusal` for the answer."""
        outcome = await self.tap_or_refusal(user, request_id, product_id=product_id, sale_id=sale_id, qty=qty)
        if type(outcome) is DomainError:
            raise DomainError(outcome.code, outcome.message)
        return outcome

    async def tap_or_refusal(
        self,
        user: str,
        request_id: str,
        *,
        product_id: str | None = None,
        sale_id: str | None = None,
        qty: int = 1,
    ) -> Outcome[dict[str, Any]] | DomainError:
        """`tap` with the refusal returned, not raised. This is the hot path, and in a storm most
        taps are refused (not live yet, sold out, over the limit): unwinding an exception through
        the handler's frames would cost more than deciding. Keep it to lookups and one store call:
        on success the cart's totals come back in it where the store counts them there (Redis's
        reserve script); a store that does not (memory) is asked once more, for the cart.

        The result is the tap's answer, `{"reservation": id, "cart": {quantity, total, currency}}`:
        the new line's id and the cart's totals after the tap. The line itself is the `cart.added`
        event, which reaches the user's connections before (and together with) the answer, so it
        is not repeated here. A retry gets the same reservation and the cart's totals as they are
        then. Outcomes are remembered in one place, the stock store, even refusals decided here:
        its memory is atomic with the units, so a retry racing its original cannot reserve twice."""
        user, request_id = check_user(user), check_request_id(request_id)
        now = self._clock()
        until = now + self.config.hold_seconds
        try:
            target = self._tap_target(product_id, sale_id, qty, now)
        except DomainError as error:
            target = error
        if type(target) is DomainError:
            result = await self._stock.refuse(self.room, user, request_id, target.code, target.message, until, now)
            if not result.replay:  # remembered as decided: answer the same error object
                return target
        else:
            pool, limit, unit = target
            result = await self._stock.reserve(self.room, pool, user, request_id, qty, limit, until, unit, now)
        reservation = result.reservation
        if reservation is None or (result.replay and reservation.pool not in self._pools):
            if result.message is not None:
                return DomainError(result.code or "conflict", result.message)
            return _STOCK_REFUSALS.get(result.code or "not_found") or DomainError("conflict", "refused")
        if result.replay:  # a retry: nothing changed, nothing to tell the room
            return Outcome(await self._answer(user, reservation, now, result.totals), [])
        line = self._line(reservation)
        answer = await self._answer(user, reservation, now, result.totals, line["currency"])
        # The figures after the last await: a newer one handled meanwhile makes this one stale.
        events = self._stock_events(reservation.pool, result.available, result.version, now, result.turned)
        events.insert(0, discrete("cart.added", line, user))
        self._view = None  # inline _changed(): the hot path
        self._version += 1
        return Outcome(answer, events)

    async def _answer(
        self, user: str, reservation: Reservation, now: float, totals: tuple[int, int] | None,
        currency: str | None = None,
    ) -> dict[str, Any]:
        """A tap's answer: the reservation and the totals of the user's cart as `cart_of` counts
        them (unexpired lines), summed from the held reservations without building their lines.
        ``totals``: the quantity and total when the store counted them in the tap's own step (a
        networked store saves a round trip), else None and they are counted here."""
        if totals is None:
            quantity = total = 0
            for held in await self._stock.cart(self.room, user):
                if held.expires_at > now:
                    quantity += held.qty
                    total += held.qty * held.unit_amount
        else:
            quantity, total = totals
        if quantity and currency is None:
            currency = self._catalog.get(self._pools[reservation.pool][0]).currency
        return {
            "reservation": reservation.id,
            "cart": {"quantity": quantity, "total": total, "currency": currency if quantity else None},
        }

    def _tap_target(
        self, product_id: str | None, sale_id: str | None, qty: int, now: float
    ) -> tuple[str, int | None, int] | DomainError:
        """The pool a tap draws from, its per-user limit and the unit price the tap locks, or why
        the tap is refused (a tap before the sale opens is returned, being the common refusal;
        malformed ones raise)."""
        if type(qty) is not int or not 1 <= qty <= self.config.max_tap_qty:
            raise DomainError("bad_request", f"qty must be an integer in [1, {self.config.max_tap_qty}]")
        if sale_id is not None:
            # A known id was checked when its sale was made: only an unknown one is checked here.
            sale = (type(sale_id) is str and self._sales.find(sale_id)) or self._sales.get(check_id("sale_id", sale_id))
            if product_id is not None and check_id("product_id", product_id) != sale.product_id:
                raise DomainError("bad_request", "the sale is for another product")
            phase = sale.phase(now)
            if phase != LIVE:
                refusal = self._not_live.get((sale.id, phase))
                if refusal is None:
                    refusal = self._not_live[(sale.id, phase)] = DomainError(
                        "sale_not_live", f"sale {sale.id} is {phase}")
                return refusal
            return sale.pool, sale.per_user_limit, sale.price
        if product_id is None:
            raise DomainError("bad_request", "tap a product_id or a sale_id")
        product = (type(product_id) is str and self._catalog.find(product_id)) or self._catalog.get(
            check_id("product_id", product_id))
        return product.pool, None, product.price

    async def uncart(self, user: str, reservation_id: str) -> Outcome[dict[str, Any]]:
        """Give a reservation back; not_found if it is not the user's or no longer held."""
        returned = await self._stock.release(self.room, user, check_request_id(reservation_id))
        if returned is None:
            raise DomainError("not_found", "no such reservation in your cart")
        r = returned.reservation
        body = {"reservation": r.id}
        return self._outcome(
            body,
            [discrete("cart.removed", body, user),
             *self._stock_events(r.pool, returned.available, returned.version, turned=returned.turned)],
        )

    async def cart_of(self, user: str) -> dict[str, Any]:
        """The user's cart: unexpired reservations, priced, with total."""
        now = self._clock()
        held = [r for r in await self._stock.cart(self.room, user) if r.expires_at > now]
        return cart_view([self._line(r) for r in held])

    # -- orders -------------------------------------------------------------------------------

    async def checkout(self, user: str, request_id: str) -> Outcome[dict[str, Any]]:
        """Turn the user's unexpired reservations into one order, committed to the records and
        appended to the purchase log before returning. Idempotent on (user, request_id): a retry
        gets the same order back (also across restarts), or the same error."""
        seen = self._checkouts.get(check_user(user), check_request_id(request_id))
        if seen is not None:
            raise DomainError(seen.code, seen.message)
        found = await self._records.order_for_request(self.room, user, request_id)
        if found is not None:
            return Outcome(Order.from_dict(found).public(), [])
        now = self._clock()
        held = await self._stock.commit(self.room, user, now, request_id)
        if not held:
            error = DomainError("cart_empty", "nothing in the cart to check out")
            self._checkouts.remember(user, request_id, error, now + self.config.hold_seconds)
            raise error
        lines = [self._order_line(r) for r in held]
        currency = self._catalog.get(self._pools[held[0].pool][0]).currency
        order = Order(f"o_{_token()}", self.room, self.host, user, request_id, currency, lines, now)
        try:
            await self._append(order, PLACED)
        except Exception:  # nothing was written: the units go back to the cart, a retry can succeed
            await self._stock.restore(self.room, held)
            raise
        events = [discrete("order.placed", order.public(), user)]
        if not self._shared_figures:
            self.stats.placed(order)
            self.stats.prune(now)
            events += self._stats_events()
        if self.config.auto_confirm:
            events += await self._close(order, PAID)
        return self._outcome(order.public(), events)

    async def confirm(self, order_id: str) -> Outcome[dict[str, Any]]:
        """Payment succeeded: placed -> paid (idempotent; conflict if cancelled)."""
        order = await self._order(order_id)
        events = await self._close(order, PAID)
        return self._outcome(order.public(), events)

    async def cancel(self, order_id: str) -> Outcome[dict[str, Any]]:
        """Payment failed or was abandoned: placed -> cancelled, units return to their pools
        (idempotent; conflict if paid)."""
        order = await self._order(order_id)
        events = await self._close(order, CANCELLED)
        return self._outcome(order.public(), events)

    async def _order(self, order_id: str) -> Order:
        data = await self._records.order(self.room, check_id("order id", order_id))
        if data is None:
            raise DomainError("not_found", f"no order {shown(order_id)}")
        return Order.from_dict(data)

    async def _close(self, order: Order, status: str) -> list[DomainEvent]:
        now = self._clock()
        if not order.close(status, now):
            return []
        await self._append(order, status)
        events = [discrete(f"order.{status}", order.public(), order.user)]
        if status == CANCELLED:
            for pool, counters in (await self._stock.refund(self.room, order.reservations())).items():
                events += self._stock_events(pool, counters.available, counters.version, now, counters.turned)
            if not self._shared_figures:
                self.stats.cancelled(order)
                events += self._stats_events()
        return events

    async def _append(self, order: Order, status: str) -> None:
        """Commit the order as it is now together with its `status` transition's log entry."""
        await self._records.put_order(order.to_dict(), order.cloud_event(status))

    # -- time and views -----------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[DomainEvent]:
        """Advance clock-driven state to `now` (default: the clock): expire reservations, start
        and end sales, slide the recent-purchases window. Returns the events to publish."""
        now = self._clock() if now is None else now
        self._checkouts.forget(now)
        events: list[DomainEvent] = []
        for returned in await self._stock.expire(self.room, now):
            r = returned.reservation
            events.append(discrete("cart.expired", {"reservation": r.id}, r.user))
            events += self._stock_events(r.pool, returned.available, returned.version, now, returned.turned)
        for sale, phase in self._sales.transitions(now):
            if phase == ENDED:
                self._sold_out.discard(sale.id)
            view = self._sale_view(sale, await self._available(sale.pool), now)
            events.append(discrete("sale.started" if phase == LIVE else "sale.ended", view))
        if not self._shared_figures and self.stats.prune(now):
            events.append(state("sales.recent", "sales.recent", self.stats.recent()))
        if events:
            self._changed()
        return events

    def take_figures(self, figures: SalesFigures) -> list[DomainEvent]:
        """Take the room's sales figures as shared records counted them (every node's orders, read
        on the room clock); the state events of those that changed. Every node takes them, so its
        snapshots show them; only the node running the room's clock publishes the events, so one
        node's older reading never overwrites another's newer one."""
        totals, recent = self.stats.set(*figures)
        events = []
        if totals:
            events.append(state("sales.totals", "sales.totals", self.stats.totals()))
        if recent:
            events.append(state("sales.recent", "sales.recent", self.stats.recent()))
        if events:
            self._changed()
        return events

    async def snapshot(self, user: str | None = None) -> dict[str, Any]:
        """Everything a client needs to render the room's shop; with `user`, their cart too.
        The values are shared with every caller until the next change: read them, never modify."""
        snap = dict(await self.view())
        if user is not None:
            snap["cart"] = await self.cart_of(user)
        return snap

    async def view(self) -> dict[str, Any]:
        """Products, tags, sales, totals and recent, built once per change. A view built while a
        change happened (a store call suspended) is returned but not kept."""
        view = self._view
        if view is not None:
            return view
        version, now = self._version, self._clock()
        view = {
            "products": [{**self._catalog.public(p.id), "available": await self._available(p.pool)}
                         for p in self._catalog],
            "tags": [t.to_dict() for t in self._tags],
            "sales": [self._sale_view(s, await self._available(s.pool), now) for s in self._sales],
            "totals": self.stats.totals(),
            "recent": self.stats.recent(),
        }
        if version == self._version:
            self._view = view
        return view

    async def product_view(self, product_id: Any) -> dict[str, Any]:
        """One product as in the view, looked up by id."""
        product = self._catalog.get(check_id("product id", product_id))
        return {**self._catalog.public(product.id), "available": await self._available(product.pool)}

    async def sale_view(self, sale_id: Any) -> dict[str, Any]:
        """One sale as in the view, looked up by id."""
        sale = self._sales.get(check_id("sale id", sale_id))
        return self._sale_view(sale, await self._available(sale.pool), self._clock())

    def _changed(self) -> None:
        self._view = None
        self._version += 1

    def _outcome(self, result: T, events: list[DomainEvent]) -> Outcome[T]:
        """The Outcome of a call; its events mean clients see a change, so the view is rebuilt."""
        if events:
            self._changed()
        return Outcome(result, events)

    async def _available(self, pool: str) -> int:
        counters = await self._stock.counters(self.room, pool)
        return 0 if counters is None else counters.available

    def _sale_view(self, sale: Sale, available: int, now: float) -> dict[str, Any]:
        view = sale.to_dict()
        del view["pool"]
        view["remaining"] = available
        view["state"] = sale.state(now, available)
        return view

    def _line(self, reservation: Reservation) -> dict[str, Any]:
        product_id, sale_id = self._pools[reservation.pool]
        sale = None if sale_id is None else self._sales.get(sale_id)
        return cart_line(reservation, self._catalog.get(product_id), sale)

    def _order_line(self, reservation: Reservation) -> OrderLine:
        line = self._line(reservation)
        return OrderLine(
            line["product"],
            line["sale"],
            line["title"],
            reservation.pool,
            reservation.qty,
            line["unit_amount"],
            line["amount"],
        )

    def _stock_events(
        self, pool: str, available: int, version: int, now: float | None = None, turned: int | None = None
    ) -> list[DomainEvent]:
        """The pool's new availability (state), and for a live sale sold_out / resumed (discrete).
        Nothing when a newer figure of the pool was already handled: with a store whose calls
        suspend, replies come back out of order, and an older figure must not overwrite a newer.

        `turned`: the transition the store made in this call (a store shared by several nodes
        decides it with the units, so one node of all announces it); None: the shop decides from
        the figures it handled, remembering what it announced."""
        if version < self._figures.get(pool, 0):
            return []
        self._figures[pool] = version
        product_id, sale_id = self._pools[pool]
        if sale_id is None:
            return [
                state(
                    "product.stock",
                    f"product.stock:{product_id}",
                    {"product": product_id, "available": available},
                )
            ]
        body = {"sale": sale_id, "product": product_id, "remaining": available}
        events = [state("sale.remaining", f"sale.remaining:{sale_id}", body)]
        live = self._sales.get(sale_id).phase(self._clock() if now is None else now) == LIVE
        if turned is not None:
            if turned and live:
                events.append(discrete("sale.sold_out" if turned == EMPTIED else "sale.resumed", body))
            return events
        if available == 0 and live and sale_id not in self._sold_out:
            self._sold_out.add(sale_id)
            events.append(discrete("sale.sold_out", body))
        elif available > 0 and sale_id in self._sold_out:
            self._sold_out.discard(sale_id)
            if live:
                events.append(discrete("sale.resumed", body))
        return events

    def _stats_events(self) -> list[DomainEvent]:
        return [
            state("sales.totals", "sales.totals", self.stats.totals()),
            state("sales.recent", "sales.recent", self.stats.recent()),
        ]
