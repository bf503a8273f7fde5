"""Rule-based property tests of the commerce domain.

`ShopMachine` drives the pure Shop with valid operations (fresh request ids, quantities in range,
known products) so that carts fill, orders are placed, paid and cancelled, prices move under held
carts and the shop restarts from its records; retries are explicit rules. `CommerceMachine` drives
the asyncio edge (overlays.runtime.Commerce) over a stock store whose every call really suspends,
running several calls at once so their awaits interleave in orders Hypothesis chooses.
Invalid inputs have their own tests at the end. Each reached state is reported with
`hypothesis.event` (see them with `pytest --hypothesis-show-statistics`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from hypothesis import event, given, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from shopkit import Clock, run

from engine.bus.memory import MemoryBus
from engine.storage import Database
from overlays.events import DomainError
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.records import SqliteRecords
from overlays.runtime import Commerce
from overlays.shop import Shop, ShopConfig
from overlays.stock.memory import MemoryStockStore

USERS = ("u1", "u2", "u3")
HOLD = 30.0
CONFIG = ShopConfig(hold_seconds=HOLD, max_tap_qty=4, user_requests=50)
PRODUCTS = {
    "a": {"id": "a", "title": "A", "price": 100, "currency": "EUR", "stock": 8},
    "b": {"id": "b", "title": "B", "price": 250, "currency": "EUR", "stock": 3},
}
SALES = {
    "s": {"id": "s", "product_id": "a", "price": 50, "quantity": 4, "duration": 120, "per_user_limit": 2},
    "later": {"id": "later", "product_id": "b", "price": 10, "quantity": 3, "duration": 60, "per_user_limit": 1},
}
TARGETS = st.sampled_from(["a", "b", "flash", "flash", "later"])  # "flash": the current flash sale


def outcome_of(call: Callable[[], Any]) -> Any:
    """A call's result, or its error code."""
    try:
        return call()
    except DomainError as error:
        return error.code


async def stock_table(shop: Shop) -> dict[str, tuple[Any, ...]]:
    """pool -> counters, for every pool the shop knows."""
    return {pool: tuple(await shop._stock.counters(shop.room, pool)) for pool in shop._pools}


async def check_invariants(shop: Shop, orders: dict[str, dict[str, Any]]) -> None:
    """What must hold whenever no call is in flight: units balance per pool and agree with the
    orders on record, per-user limits hold, cart lines are priced consistently, totals add up and
    the purchase log holds each transition of each order exactly once."""
    room = shop.room
    sold: Counter[str] = Counter()
    per_user: Counter[tuple[str, str]] = Counter()
    for order in await shop._records.orders(room, None, 1000, 0):
        if order["status"] != "cancelled":
            for line in order["lines"]:
                sold[line["pool"]] += line["quantity"]
                per_user[(line["pool"], order["user"])] += line["quantity"]
    carts = {user: await shop._stock.cart(room, user) for user in USERS}
    for pool, (_, sale_id) in shop._pools.items():
        c = await shop._stock.counters(room, pool)
        assert c.available >= 0 and c.reserved >= 0 and c.sold >= 0
        assert c.reserved + c.sold + c.available == c.quantity
        assert c.sold == sold[pool]
        held = {user: sum(r.qty for r in carts[user] if r.pool == pool) for user in USERS}
        assert c.reserved == sum(held.values())
        if sale_id is not None:
            limit = shop._sales.get(sale_id).per_user_limit
            assert all(held[user] + per_user[(pool, user)] <= limit for user in USERS)
    for user in USERS:
        cart = await shop.cart_of(user)
        assert all(line["amount"] == line["unit_amount"] * line["quantity"] for line in cart["lines"])
        assert cart["total"] == sum(line["amount"] for line in cart["lines"])
    live = [o for o in orders.values() if o["status"] != "cancelled"]
    assert shop.stats.totals() == {
        "orders": len(live),
        "units": sum(o["quantity"] for o in live),
        "revenue": {"EUR": sum(o["total"] for o in live)} if live else {},
    }
    seen = Counter(entry.event["id"] for entry in await shop._records.log.read(limit=1000))
    assert all(n == 1 for n in seen.values())
    for order_id, order in orders.items():
        assert seen[f"{order_id}.placed"] == 1
        for status in ("paid", "cancelled"):
            assert seen[f"{order_id}.{status}"] == (order["status"] == status)


class ShopMachine(RuleBasedStateMachine):
    """The pure shop on one room clock, with a model of prices, requests and orders."""

    @initialize()
    def setup(self) -> None:
        self.clock = Clock()
        self.db = Database(":memory:", threaded=False)
        self.log = SqlitePurchaseLog(self.db)
        self.records = SqliteRecords(self.db, self.log)
        self.shop = self.new_shop()
        for product in PRODUCTS.values():
            run(self.shop.put_product(product))
        run(self.shop.start_sale(SALES["s"]))
        run(self.shop.start_sale({**SALES["later"], "starts_at": self.clock.now + 40}))
        self.prices = {"a": 100, "b": 250, "s": 50, "later": 10}
        self.flash = "s"
        self.ids = itertools.count()
        # (user, id) -> (first outcome, when, what was tapped)
        self.taps: dict[tuple[str, str], tuple[Any, float, dict[str, Any]]] = {}
        self.checkouts: dict[tuple[str, str], tuple[Any, float]] = {}
        self.orders: dict[str, dict[str, Any]] = {}  # order id -> latest public view
        self.tags: dict[str, dict[str, Any]] = {}
        self.restarts = 0

    def new_shop(self) -> Shop:
        return Shop("room1", "host1", stock=MemoryStockStore(CONFIG.user_requests),
                    records=self.records, config=CONFIG, clock=self.clock)

    def teardown(self) -> None:
        if hasattr(self, "db"):
            target(float(len(self.orders)), label="orders placed")
            self.db.close()

    # -- viewers ------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), what=TARGETS, qty=st.integers(1, 3))
    def tap(self, user: str, what: str, qty: int) -> None:
        request = f"t{next(self.ids)}"
        if what == "flash":
            self.keep_a_flash_sale_running()
            what = self.flash
        where: dict[str, Any] = {"product_id": what} if what in PRODUCTS else {"sale_id": what}
        where["qty"] = qty
        out = run(self.shop.tap_or_refusal(user, request, **where))
        if type(out) is DomainError:
            self.taps[(user, request)] = (out.code, self.clock.now, where)
            event(f"tap: {out.code}")
            return
        assert out.events[0].type == "cart.added"
        line = out.events[0].data
        assert line["unit_amount"] == self.prices[what] and line["quantity"] == qty
        self.check_answer(user, out.result, line["reservation"])
        self.taps[(user, request)] = (line["reservation"], self.clock.now, where)
        event(f"tap: reserved ({'product' if what in PRODUCTS else 'sale'})")

    def check_answer(self, user: str, answer: dict[str, Any], reservation: str) -> None:
        """A tap's answer names the line and carries the cart's totals, as the cart counts them."""
        cart = run(self.shop.cart_of(user))
        assert answer == {"reservation": reservation,
                          "cart": {k: cart[k] for k in ("quantity", "total", "currency")}}

    @rule(data=st.data())
    def retry_tap(self, data: st.DataObject) -> None:
        """A retry within the hold time gets the first outcome again, changes nothing, says nothing."""
        if not self.taps:
            return
        self.replay_tap(data.draw(st.sampled_from(list(self.taps))))

    @rule(user=st.sampled_from(USERS), what=TARGETS, wait=st.sampled_from([HOLD / 2, HOLD - 1]))
    def retry_late_in_the_hold(self, user: str, what: str, wait: float) -> None:
        """A shopper whose network came back retries late in the hold time, while the room's clock
        has run on (others' reservations expiring): the first answer again, nothing reserved twice."""
        self.tap(user, what, 1)
        self.advance(wait)
        self.replay_tap(next(reversed(self.taps)))
        event("tap retry: late in the hold time")

    def replay_tap(self, key: tuple[str, str]) -> None:
        (user, request), (first, when, where) = key, self.taps[key]
        if self.clock.now >= when + HOLD:
            event("tap retry: after the hold time (may be forgotten)")
            return
        before = run(stock_table(self.shop))
        out = run(self.shop.tap_or_refusal(user, request, **where))
        if type(out) is DomainError:
            assert out.code == first
        else:
            assert out.events == []
            self.check_answer(user, out.result, first)
        assert run(stock_table(self.shop)) == before
        event(f"tap retry: replayed {'refusal' if type(out) is DomainError else 'line'}")

    @rule(data=st.data())
    def uncart(self, data: st.DataObject) -> None:
        """A viewer with something in the cart takes a line out again."""
        held = [(user, line) for user in USERS for line in run(self.shop.cart_of(user))["lines"]]
        if not held:
            event("uncart: every cart empty")
            return
        user, line = data.draw(st.sampled_from(held))
        run(self.shop.uncart(user, line["reservation"]))
        assert line["reservation"] not in [ln["reservation"] for ln in run(self.shop.cart_of(user))["lines"]]
        assert outcome_of(lambda: run(self.shop.uncart(user, line["reservation"]))) == "not_found"
        event("uncart: returned units")

    @rule(user=st.sampled_from(USERS))
    def checkout(self, user: str) -> None:
        request = f"c{next(self.ids)}"
        cart = run(self.shop.cart_of(user))
        out = outcome_of(lambda: run(self.shop.checkout(user, request)).result)
        self.checkouts[(user, request)] = (out, self.clock.now)
        if not cart["lines"]:
            assert out == "cart_empty"
            event("checkout: cart empty")
            return
        assert out["total"] == cart["total"] and out["quantity"] == cart["quantity"]
        assert sorted((ln["product"], ln["unit_amount"]) for ln in out["lines"]) == sorted(
            (ln["product"], ln["unit_amount"]) for ln in cart["lines"])
        self.orders[out["id"]] = out
        event("checkout: order placed")
        if any(ln["unit_amount"] != self.prices[ln["sale"] or ln["product"]] for ln in out["lines"]):
            event("checkout: paid a price locked before a price change")

    @rule(user=st.sampled_from(USERS), what=TARGETS, qty=st.integers(1, 2), price=st.sampled_from([None, 1500]))
    def buy_now(self, user: str, what: str, qty: int, price: int | None) -> None:
        """The common path: tap, then check out straight away (the host may move the price between)."""
        self.tap(user, what, qty)
        if price is not None and what in PRODUCTS:
            self.reprice(what, price + self.prices[what])
        self.checkout(user)

    @rule(data=st.data())
    def retry_checkout(self, data: st.DataObject) -> None:
        if not self.checkouts:
            return
        (user, request), (first, when) = data.draw(st.sampled_from(list(self.checkouts.items())))
        out = outcome_of(lambda: run(self.shop.checkout(user, request)).result)
        if isinstance(first, dict):
            assert isinstance(out, dict) and out["id"] == first["id"] and out["total"] == first["total"]
            event("checkout retry: same order")
        elif self.clock.now < when + HOLD:
            assert out == first
            event("checkout retry: same refusal")
        else:
            event("checkout retry: refusal after the hold time")
        if isinstance(out, dict):
            self.orders.setdefault(out["id"], out)

    # -- payment and hosts ----------------------------------------------------------------------

    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        self.settle(data, pay=True)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.settle(data, pay=False)

    def settle(self, data: st.DataObject, pay: bool) -> None:
        """The payment service's callback (it may repeat, or contradict an earlier one)."""
        if not self.orders:
            return
        # Insertion order, not sorted: order ids are random, so a sorted list would differ when
        # Hypothesis replays a saved example, and the replay would draw another order.
        order_id = data.draw(st.sampled_from(list(self.orders)))
        before = self.orders[order_id]["status"]
        out = outcome_of(lambda: run(self.shop.confirm(order_id) if pay else self.shop.cancel(order_id)).result)
        wanted = "paid" if pay else "cancelled"
        if before in ("placed", wanted):
            assert out["status"] == wanted
            self.orders[order_id] = out
            event(f"order: {wanted}" if before == "placed" else "order: transition repeated")
        else:
            assert out == "conflict"
            event("order: conflicting transition refused")

    @rule(seconds=st.sampled_from([1, 10, 29, 31, 60]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        events = run(self.shop.tick())
        if any(e.type == "cart.expired" for e in events):
            event("tick: reservations expired")
        if any(e.type in ("sale.started", "sale.ended") for e in events):
            event("tick: a sale started or ended")

    @rule()
    def end_sale(self) -> None:
        run(self.shop.end_sale(self.flash))

    def keep_a_flash_sale_running(self) -> None:
        """Once the flash sale is over the host starts another (held units of the old one stay)."""
        if self.shop._sales.get(self.flash).phase(self.clock.now) != "ended":
            return
        self.flash = f"s{next(self.ids)}"
        price = 50 + len(self.prices)
        run(self.shop.start_sale({**SALES["s"], "id": self.flash, "price": price}))
        self.prices[self.flash] = price
        event("host: started another flash sale")

    @rule(product=st.sampled_from(sorted(PRODUCTS)), price=st.sampled_from([100, 250, 1500, 99900]))
    def reprice(self, product: str, price: int) -> None:
        """The host changes a price: later taps lock the new one, held lines keep theirs."""
        run(self.shop.put_product({"id": product, "price": price}))
        self.prices[product] = price

    @rule(tag=st.sampled_from(["t1", "t2", "t3"]), product=st.sampled_from(sorted(PRODUCTS)),
          x=st.sampled_from([0.0, 0.5, 1.0]), label=st.sampled_from([None, "Now!"]))
    def pin(self, tag: str, product: str, x: float, label: str | None) -> None:
        out = run(self.shop.pin({"id": tag, "product_id": product, "x": x, "y": 0.5, "label": label}))
        self.tags[tag] = out.result

    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        if not self.tags:
            return
        run(self.shop.unpin(self.tags.pop(data.draw(st.sampled_from(sorted(self.tags))))["id"]))

    @rule()
    def restart(self) -> None:
        """Rebuild from the records into a fresh stock store: everything durable is as before,
        held units are back on sale, and every invariant holds again."""
        old = self.shop
        before = run(old.snapshot())
        counters = run(stock_table(old))
        self.shop = self.new_shop()
        run(self.shop.load())
        after = run(self.shop.snapshot())
        assert after["tags"] == before["tags"] == [self.tags[t] for t in self.tags]
        strip = ("available", "remaining", "state")
        assert [{k: v for k, v in p.items() if k not in strip} for p in after["products"]] == [
            {k: v for k, v in p.items() if k not in strip} for p in before["products"]]
        assert [{k: v for k, v in s.items() if k not in strip} for s in after["sales"]] == [
            {k: v for k, v in s.items() if k not in strip} for s in before["sales"]]
        assert after["totals"] == before["totals"]
        for pool, (quantity, _, _, sold, *_) in counters.items():
            now = run(self.shop._stock.counters(self.shop.room, pool))
            assert now[:4] == (quantity, quantity - sold, 0, sold)
        assert all(not run(self.shop.cart_of(user))["lines"] for user in USERS)
        run(check_invariants(self.shop, self.orders))
        # Held units and the memory of refusals were not durable; orders are.
        self.taps.clear()
        self.checkouts = {k: v for k, v in self.checkouts.items() if isinstance(v[0], dict)}
        self.restarts += 1
        event("restart: with orders on record" if self.orders else "restart: no orders yet")

    @invariant()
    def invariants(self) -> None:
        run(check_invariants(self.shop, self.orders))


ShopMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestShopProperties = ShopMachine.TestCase


class SuspendingStock:
    """A stock store whose every call suspends before and after its atomic step, as a networked
    store's do (the request goes out, the script runs, the reply comes back). How many times each
    suspension yields comes from a schedule the running rule drew, so Hypothesis chooses (and
    shrinks) the interleaving; past the schedule's end, calls suspend once."""

    def __init__(self, inner: MemoryStockStore) -> None:
        self.inner = inner
        self.schedule: Iterator[int] = iter(())
        self.suspended = 0

    async def _pause(self) -> None:
        for _ in range(next(self.schedule, 1)):
            self.suspended += 1
            await asyncio.sleep(0)

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self._pause()
            result = await method(*args, **kwargs)
            await self._pause()
            return result

        return call


async def gather(calls: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run the calls at once; every one finishes before the first failure is raised (a refusal
    returned as a value is a result, not a failure)."""

    async def capture(call: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
        try:
            return True, await call
        except Exception as error:  # noqa: BLE001 - re-raised below, once every call is done
            return False, error

    results = await asyncio.gather(*map(capture, calls))
    for ok, value in results:
        if not ok:
            raise value
    return [value for _, value in results]


OPS = st.one_of(
    st.tuples(st.just("tap"), st.sampled_from(USERS), st.sampled_from(["a", "b", "s"]), st.integers(1, 2)),
    st.tuples(st.just("tap twice"), st.sampled_from(USERS), st.sampled_from(["a", "s"]), st.just(1)),
    st.tuples(st.just("checkout"), st.sampled_from(USERS)),
    st.tuples(st.just("checkout twice"), st.sampled_from(USERS)),
    st.tuples(st.just("uncart"), st.sampled_from(USERS)),
    st.tuples(st.sampled_from(["confirm", "cancel"])),
    st.tuples(st.just("tick"), st.sampled_from([0, 5, 31])),
    st.tuples(st.just("reprice"), st.sampled_from(["a", "b"]), st.sampled_from([100, 1500, 99900])),
)


class CommerceMachine(RuleBasedStateMachine):
    """Batches of concurrent calls on the asyncio edge; after each batch, with nothing in flight,
    the domain invariants hold, every retry got its original's outcome, and every tap locked a
    price the item had during the batch."""

    @initialize()
    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.stock = SuspendingStock(MemoryStockStore(CONFIG.user_requests))
        self.bus = MemoryBus()
        self.added: dict[str, dict[str, Any]] = {}  # reservation -> its line, from cart.added
        self.bus.subscribe("room1", self)
        db = Database(":memory:", threaded=False)
        log = SqlitePurchaseLog(db)
        self.commerce = Commerce(
            self.bus, stock=self.stock, log=log, records=SqliteRecords(db, log),
            config=CONFIG, room_exists=lambda room: room == "room1", clock=self.clock)
        for product in PRODUCTS.values():
            self.run(self.commerce.put_product("room1", product))
        self.run(self.commerce.start_sale("room1", SALES["s"]))
        self.shop = self.run(self.commerce.shop("room1"))
        self.prices = {"a": 100, "b": 250, "s": 50}
        self.ids = itertools.count()
        self.orders: dict[str, dict[str, Any]] = {}

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def on_events(self, events: Any) -> None: ...

    def on_direct(self, user: str, message: dict[str, Any]) -> None:
        """The lines taps added, as their users are told (the answers only name them)."""
        if message["type"] == "cart.added":
            self.added[message["reservation"]] = message

    def teardown(self) -> None:
        if hasattr(self, "loop"):
            target(float(self.stock.suspended), label="store calls suspended")
            self.loop.close()

    async def attempt(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except DomainError as error:
            return error.code

    def calls(self, op: tuple[Any, ...]) -> list[Coroutine[Any, Any, Any]]:
        kind, commerce, room = op[0], self.commerce, "room1"
        if kind in ("tap", "tap twice"):
            _, user, what, qty = op
            request = f"t{next(self.ids)}"
            where = {"product_id": what} if what in PRODUCTS else {"sale_id": what}
            return [commerce.tap(room, user, request, qty=qty, **where) for _ in range(1 if kind == "tap" else 2)]
        if kind in ("checkout", "checkout twice"):
            request = f"c{next(self.ids)}"
            times = 1 if kind == "checkout" else 2
            return [self.attempt(commerce.checkout(room, op[1], request)) for _ in range(times)]
        if kind == "uncart":
            return [self.attempt(self.uncart_first(op[1]))]
        if kind in ("confirm", "cancel"):
            order_id = max(self.orders, default="none")
            settle = commerce.confirm if kind == "confirm" else commerce.cancel
            return [self.attempt(settle(room, order_id))]
        if kind == "tick":
            return [self.advance_and_tick(op[1])]
        _, product, price = op
        return [commerce.put_product(room, {"id": product, "price": price})]

    async def uncart_first(self, user: str) -> Any:
        cart = await self.commerce.cart("room1", user)
        if not cart["lines"]:
            return "empty"
        return await self.commerce.uncart("room1", user, cart["lines"][0]["reservation"])

    async def advance_and_tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.commerce.tick()

    @rule(ops=st.lists(OPS, min_size=2, max_size=4), schedule=st.lists(st.integers(0, 3), max_size=40))
    def together(self, ops: list[tuple[Any, ...]], schedule: list[int]) -> None:
        before = dict(self.prices)
        # Twin calls (a retry racing its original) must agree unless the batch's ticks moved the
        # clock past the hold time between them (then the first may be forgotten, by contract).
        same_hold = sum(op[1] for op in ops if op[0] == "tick") < HOLD
        batches = [self.calls(op) for op in ops]
        self.stock.schedule = iter(schedule)
        try:
            flat = self.run(gather([c for batch in batches for c in batch]))
        finally:
            self.stock.schedule = iter(())
        for op in ops:
            if op[0] == "reprice":
                self.prices[op[1]] = op[2]
        results = iter(flat)
        for op, batch in zip(ops, batches, strict=True):
            got = [next(results) for _ in batch]
            kind = op[0]
            if kind.endswith("twice") and same_hold:
                first, second = got
                if isinstance(first, dict) and "id" in first:  # orders: the same one
                    assert isinstance(second, dict) and second["id"] == first["id"]
                else:
                    assert type(first) is type(second)
                    if isinstance(first, dict):  # taps: the same line (the cart may have moved between)
                        assert first["reservation"] == second["reservation"]
                    elif type(first) is DomainError:
                        assert first.code == second.code
                    else:
                        assert first == second
                event(f"together: {kind} (a retry racing its original)")
            for result in got:
                if kind.startswith("tap") and isinstance(result, dict):
                    what = op[2]
                    line = self.added[result["reservation"]]
                    had = {before[what], *(o[2] for o in ops if o[0] == "reprice" and o[1] == what)}
                    assert line["unit_amount"] in had
                    event("together: tap reserved")
                if kind.startswith("checkout") and isinstance(result, dict):
                    self.orders[result["id"]] = result
                    event("together: order placed")
            if kind in ("confirm", "cancel") and isinstance(got[0], dict):
                event(f"together: order {got[0]['status']}")
        event(f"together: {len(ops)} calls, {len({op[0] for op in ops})} kinds")

    @invariant()
    def invariants(self) -> None:
        for order_id in self.orders:
            self.orders[order_id] = self.run(self.commerce.order("room1", order_id))
        self.run(check_invariants(self.shop, self.orders))

    @invariant()
    def published_figures_are_current(self) -> None:
        """The room's coalesced stock figures (what every viewer is shown) match the store once
        nothing is in flight, whatever order the calls' replies came back in."""
        self.bus.flush_state()
        figures = self.bus.state("room1")
        for product in PRODUCTS:
            shown = figures.get(f"product.stock:{product}")
            assert shown is not None and shown["available"] == self.run(self.shop._available(
                self.shop._catalog.get(product).pool))
        shown = figures.get("sale.remaining:s")
        pool = self.shop._sales.get("s").pool
        assert shown is not None and shown["remaining"] == self.run(self.shop._available(pool))


CommerceMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=8, deadline=None)
TestCommerceInterleavings = CommerceMachine.TestCase


# -- invalid inputs: refused with a clear code, and nothing changes ------------------------------

BAD_QTY = st.one_of(
    st.integers(max_value=0), st.integers(min_value=CONFIG.max_tap_qty + 1), st.booleans(),
    st.floats(allow_nan=True), st.text(max_size=3), st.none(), st.just([1]))
BAD_IDS = st.one_of(st.just(""), st.text(min_size=129, max_size=140), st.integers(), st.none(), st.just(["r"]))


def fresh_shop() -> Shop:
    db = Database(":memory:", threaded=False)
    shop = Shop("room1", "host1", stock=MemoryStockStore(), records=SqliteRecords(db, SqlitePurchaseLog(db)),
                config=CONFIG, clock=Clock())
    for product in PRODUCTS.values():
        run(shop.put_product(product))
    run(shop.start_sale(SALES["s"]))
    return shop


SHOP = fresh_shop()  # invalid taps change nothing, so the examples can share one shop


@settings(max_examples=150, deadline=None)
@given(qty=BAD_QTY, what=st.sampled_from(["a", "s"]))
def test_a_tap_with_a_bad_quantity_is_refused(qty: Any, what: str) -> None:
    before = run(stock_table(SHOP))
    where = {"product_id": what} if what in PRODUCTS else {"sale_id": what}
    request = "bad-" + repr(qty).encode().hex()[:120]  # request ids are printable ASCII without spaces
    out = run(SHOP.tap_or_refusal("u1", request, qty=qty, **where))
    assert type(out) is DomainError and out.code == "bad_request"
    assert run(stock_table(SHOP)) == before and run(SHOP.cart_of("u1"))["lines"] == []


@settings(max_examples=100, deadline=None)
@given(user=st.one_of(st.sampled_from(USERS), BAD_IDS), request=st.one_of(st.just("r1"), BAD_IDS))
def test_bad_user_or_request_ids_are_refused(user: Any, request: Any) -> None:
    if user in USERS and request == "r1":
        return
    before = run(stock_table(SHOP))
    assert outcome_of(lambda: run(SHOP.tap_or_refusal(user, request, product_id="a"))) == "bad_request"
    assert outcome_of(lambda: run(SHOP.checkout(user, request))) == "bad_request"
    assert run(stock_table(SHOP)) == before


@settings(max_examples=100, deadline=None)
@given(product=st.one_of(st.text(max_size=70), st.integers(), st.none()),
       sale=st.one_of(st.none(), st.text(max_size=70), st.integers()))
def test_taps_on_unknown_or_malformed_items_are_refused(product: Any, sale: Any) -> None:
    if (product in PRODUCTS and sale is None) or sale == "s":
        return
    before = run(stock_table(SHOP))
    request = f"unknown-{hash((repr(product), repr(sale))) & 0xFFFFFFFF:x}"  # a valid id, whatever the items
    out = run(SHOP.tap_or_refusal("u2", request, product_id=product, sale_id=sale))
    assert type(out) is DomainError and out.code in ("bad_request", "not_found")
    assert run(stock_table(SHOP)) == before
