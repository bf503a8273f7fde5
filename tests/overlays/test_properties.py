"""Rule-based property tests: random interleavings of taps, uncarts, expiries, checkouts,
confirmations, cancellations and sale ends keep the commerce invariants at every step."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from shopkit import Clock, make_shop, run

from overlays.events import DomainError

USERS = st.sampled_from(["u1", "u2", "u3"])
REQUESTS = st.sampled_from([f"q{i}" for i in range(6)])
QTY = st.one_of(st.integers(-2, 5), st.sampled_from([10**9, 2**63]))
LIMIT = 2


class ShopMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.clock = Clock()
        self.shop = make_shop(self.clock, hold_seconds=30, max_tap_qty=4)
        run(self.shop.put_product({"id": "a", "title": "A", "price": 100, "currency": "EUR", "stock": 6}))
        run(self.shop.put_product({"id": "b", "title": "B", "price": 250, "currency": "EUR", "stock": 2}))
        run(
            self.shop.start_sale(
                {
                    "id": "s",
                    "product_id": "a",
                    "price": 50,
                    "quantity": 4,
                    "duration": 120,
                    "per_user_limit": LIMIT,
                }
            )
        )
        run(
            self.shop.start_sale(
                {
                    "id": "later",
                    "product_id": "b",
                    "price": 10,
                    "quantity": 3,
                    "starts_at": self.clock.now + 40,
                    "duration": 60,
                    "per_user_limit": 1,
                }
            )
        )
        self.outcomes: dict[tuple[str, str, str], Any] = {}
        self.orders: dict[str, dict[str, Any]] = {}  # order id -> latest public view
        self.reservations: list[tuple[str, str]] = []

    def remember(self, key: tuple[str, str, str], call: Any) -> Any:
        """Run a request; a repeated key must give the same outcome (result or error code)."""
        try:
            result: Any = run(call).result
        except DomainError as error:
            result = error.code
        if key in self.outcomes:
            first = self.outcomes[key]
            if key[0] == "checkout" and isinstance(first, dict):
                assert isinstance(result, dict) and result["id"] == first["id"]
            else:
                assert result == first
        else:
            self.outcomes[key] = result
        return result

    @rule(user=USERS, request=REQUESTS, what=st.sampled_from(["a", "b", "s", "later", "ghost"]), qty=QTY)
    def tap(self, user: str, request: str, what: str, qty: int) -> None:
        kwargs = {"sale_id": what} if what in ("s", "later") else {"product_id": what}
        result = self.remember(("tap", user, request), self.shop.tap(user, request, qty=qty, **kwargs))
        if isinstance(result, dict):
            self.reservations.append((user, result["reservation"]))

    @rule(data=st.data())
    def uncart(self, data: st.DataObject) -> None:
        if self.reservations:
            user, reservation = data.draw(st.sampled_from(self.reservations))
            try:
                run(self.shop.uncart(user, reservation))
            except DomainError as error:
                assert error.code == "not_found"

    @rule(seconds=st.sampled_from([1, 10, 29, 31, 60]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        run(self.shop.tick())

    @rule(user=USERS, request=REQUESTS)
    def checkout(self, user: str, request: str) -> None:
        result = self.remember(("checkout", user, request), self.shop.checkout(user, request))
        if isinstance(result, dict):
            self.orders.setdefault(result["id"], result)
        else:
            assert result == "cart_empty"

    @rule(data=st.data(), pay=st.booleans())
    def settle(self, data: st.DataObject, pay: bool) -> None:
        if not self.orders:
            return
        order_id = data.draw(st.sampled_from(sorted(self.orders)))
        try:
            out = run(self.shop.confirm(order_id) if pay else self.shop.cancel(order_id))
            self.orders[order_id] = out.result
        except DomainError as error:
            assert error.code == "conflict"

    @rule()
    def end_sale(self) -> None:
        run(self.shop.end_sale("s"))

    @invariant()
    def pools_balance(self) -> None:
        shop, room = self.shop, self.shop.room
        sold: Counter[str] = Counter()
        per_user: Counter[tuple[str, str]] = Counter()
        for order in self.orders.values():
            if order["status"] != "cancelled":
                data = run(shop._records.order(room, order["id"]))
                for line in data["lines"]:
                    sold[line["pool"]] += line["quantity"]
                    per_user[(line["pool"], data["user"])] += line["quantity"]
        for pool, (_, sale_id) in shop._pools.items():
            c = run(shop._stock.counters(room, pool))
            assert c.available >= 0 and c.reserved >= 0 and c.sold >= 0
            assert c.reserved + c.sold + c.available == c.quantity
            assert c.sold == sold[pool]
            held = Counter()
            for user in ("u1", "u2", "u3"):
                held[user] = sum(r.qty for r in run(shop._stock.cart(room, user)) if r.pool == pool)
            assert c.reserved == sum(held.values())
            if sale_id is not None:
                limit = shop._sales.get(sale_id).per_user_limit
                for user in ("u1", "u2", "u3"):
                    assert held[user] + per_user[(pool, user)] <= limit

    @invariant()
    def log_has_each_transition_once(self) -> None:
        entries = run(self.shop._records.log.read(limit=1000))
        seen = Counter(e.event["id"] for e in entries)
        assert all(n == 1 for n in seen.values())
        for order_id, order in self.orders.items():
            assert seen[f"{order_id}.placed"] == 1
            for status in ("paid", "cancelled"):
                assert seen[f"{order_id}.{status}"] == (order["status"] == status)


ShopMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestShopProperties = ShopMachine.TestCase
