"""Rule-based property test of the Redis stock store with several nodes on one Redis.

Each node is its own RedisStockStore (its own client and connections) on the same key prefix, with
a clock of its own (skewed from the others). A rule runs a batch of calls from the nodes at once
(taps, retries of earlier taps, removals, expiry on each node's clock, checkouts, checkouts whose
order could not be written, refunds), so Redis receives them interleaved. After every batch, with
nothing in flight, the memory store's invariants hold: per pool reserved + sold + available ==
quantity and available >= 0, reserved units are exactly the units in carts, sold units are exactly
the committed lines not refunded, no user holds more of a sale than its limit, and no reservation
ended twice (returned by release or expiry, or sold). Reached states are reported with
`hypothesis.event` (see them with `pytest --hypothesis-show-statistics`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from typing import Any

from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from overlays.stock.base import Reservation, ReserveResult, Returned
from overlays.stock.redis import RedisStockStore
from tests.redis_server import SharedRedis

ROOM = "room1"
USERS = ("u1", "u2", "u3")
HOLD = 30.0
SKEWS = (0.0, 2.5, -4.0)  # each node's clock against the first's
POOLS = {"p": (6, None), "s": (4, 2)}  # pool -> (quantity, per-user limit)
NODES = st.integers(0, len(SKEWS) - 1)

CALL = st.one_of(
    st.tuples(st.just("tap"), NODES, st.sampled_from(USERS), st.sampled_from(sorted(POOLS)), st.integers(1, 3)),
    st.tuples(st.just("retry"), NODES, st.integers(0, 1000)),
    st.tuples(st.just("release"), NODES, st.integers(0, 1000)),
    st.tuples(st.just("expire"), NODES),
    st.tuples(st.just("commit"), NODES, st.sampled_from(USERS)),
    st.tuples(st.just("unwritten"), NODES, st.sampled_from(USERS)),
    st.tuples(st.just("refund"), NODES, st.integers(0, 1000)),
)


async def at_once(calls: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    return await asyncio.gather(*calls)


def accounting_order(done: tuple[tuple[Any, ...], Any]) -> int:
    """Whatever order Redis ran a batch in, its results are accounted in one that fits it: new
    reservations first, then checkouts that were undone (their lines stay held), then what ended
    reservations, and last the removals that found nothing (another call ended theirs)."""
    (kind, *_), result = done
    if kind == "tap" or (kind == "retry" and not result.replay):
        return 0
    if kind == "retry":
        return 1
    if kind == "unwritten":
        return 1
    return 3 if kind == "release" and result is None else 2


class RedisStockMachine(RuleBasedStateMachine):
    """Several nodes' calls on one Redis, checked against a model of what each call did."""

    redis_url = ""  # set by the test from the run's Redis

    @initialize()
    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.prefix = SharedRedis.new_prefix()
        self.nodes = [RedisStockStore.from_url(self.redis_url, prefix=self.prefix, timeout=5.0) for _ in SKEWS]
        self.now = 1_700_000_000.125  # the first node's clock; fractions survive the trip to Redis
        self.ids = itertools.count()
        for pool, (quantity, _) in POOLS.items():
            self.run(self.nodes[0].define(ROOM, pool, quantity))
        self.live: dict[str, Reservation] = {}  # reservations held, by id
        self.orders: list[list[Reservation]] = []  # committed lines per order, not refunded
        # (user, request) -> (pool, qty, until, every result it was given fresh: once, or again
        # after its first was forgotten)
        self.taps: dict[tuple[str, str], tuple[str, int, float, list[ReserveResult]]] = {}
        self.forgotten_until = 0.0  # the latest `now` any node expired with: results until then are gone

    def teardown(self) -> None:
        if not hasattr(self, "loop"):
            return
        client = self.nodes[0].client

        async def clean() -> None:
            keys = [key async for key in client.scan_iter(match=self.prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
            for node in self.nodes:
                await node.close()

        self.run(clean())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def clock(self, node: int) -> float:
        return self.now + SKEWS[node]

    # -- rules --------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([1.0, 10.0, 29.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(calls=st.lists(CALL, min_size=1, max_size=8))
    def batch(self, calls: list[tuple[Any, ...]]) -> None:
        """Run the calls at once, then account for their results (see `accounting_order`)."""
        coros: list[Coroutine[Any, Any, Any]] = []
        plans: list[tuple[Any, ...]] = []
        releasing: set[str] = set()
        refunding: set[int] = set()
        for call in calls:
            kind, node = call[0], call[1]
            store, now = self.nodes[node], self.clock(node)
            if kind == "tap":
                _, _, user, pool, qty = call
                request = f"t{next(self.ids)}"
                coros.append(store.reserve(ROOM, pool, user, request, qty, POOLS[pool][1], now + HOLD, 100 + qty, now))
                plans.append(("tap", user, request, pool, qty, now + HOLD, now))
            elif kind == "retry" and self.taps:
                user, request = list(self.taps)[call[2] % len(self.taps)]
                pool, qty, until, _ = self.taps[(user, request)]
                coros.append(store.reserve(ROOM, pool, user, request, qty, POOLS[pool][1], until, 100 + qty, now))
                plans.append(("retry", user, request, pool, qty, until, now))
            elif kind == "release" and self.live:
                held = sorted(self.live)
                reservation = self.live[held[call[2] % len(held)]]
                user = reservation.user if call[2] % 4 else "someone-else"  # not theirs: nothing happens
                coros.append(store.release(ROOM, user, reservation.id))
                plans.append(("release", reservation, user))
                releasing.add(reservation.id)
            elif kind == "expire":
                coros.append(store.expire(ROOM, now))
                plans.append(("expire", now))
            elif kind == "commit":
                coros.append(store.commit(ROOM, call[2], now))
                plans.append(("commit", call[2], now))
            elif kind == "unwritten":
                coros.append(self.commit_then_restore(store, call[2], now))
                plans.append(("unwritten", call[2], now))
            elif kind == "refund" and self.orders and call[2] % len(self.orders) not in refunding:
                index = call[2] % len(self.orders)
                refunding.add(index)
                coros.append(store.refund(ROOM, self.orders[index]))
                plans.append(("refund", index))
        if not coros:
            event("batch: nothing to do yet")
            return
        results = self.run(at_once(coros))
        event(f"batch: {len(coros)} calls at once" if len(coros) > 1 else "batch: one call")
        expired_now = max([plan[1] for plan in plans if plan[0] == "expire"], default=0.0)
        self.forgotten_until = max(self.forgotten_until, expired_now)
        self.undone: set[str] = set()  # lines of this batch's checkouts that were put back
        self.alone = len(coros) == 1  # the model knows the cart a lone call saw
        for plan, result in sorted(zip(plans, results, strict=True), key=accounting_order):
            getattr(self, "account_" + plan[0])(plan, result)
        for index in sorted(refunding, reverse=True):
            del self.orders[index]

    async def commit_then_restore(self, store: RedisStockStore, user: str, now: float) -> list[Reservation]:
        """A checkout whose order could not be written: the lines go back to the cart as they were."""
        lines = await store.commit(ROOM, user, now)
        await store.restore(ROOM, lines)
        return lines

    # -- accounting (the model) ---------------------------------------------------------------

    def account_tap(self, plan: tuple[Any, ...], result: ReserveResult) -> None:
        _, user, request, pool, qty, until, now = plan
        assert not result.replay
        self.taps.setdefault((user, request), (pool, qty, until, []))[3].append(result._replace(totals=None))
        if result.ok:
            assert result.reservation.id not in self.live
            self.live[result.reservation.id] = result.reservation
            self.check_totals(user, now, result)
            event("tap: reserved")
        else:
            assert result.code in ("sold_out", "limit_reached")
            assert result.totals is None  # a refusal's answer shows no cart
            event(f"tap: {result.code}")

    def account_retry(self, plan: tuple[Any, ...], result: ReserveResult) -> None:
        _, user, request, pool, qty, until, now = plan
        if result.replay:  # a result it was given before, unchanged
            assert result._replace(replay=False, totals=None) in self.taps[(user, request)][3]
            if result.ok:
                self.check_totals(user, now, result)
            event("retry: first result again")
        else:  # run again: only once an expiry (on any node's clock) passed its time
            assert until <= self.forgotten_until
            self.account_tap(("tap", user, request, pool, qty, until, now), result)
            event("retry: after its hold, a new tap")

    def check_totals(self, user: str, now: float, result: ReserveResult) -> None:
        """A reservation's answer carries the cart's totals at the call's time: exactly the model's
        when the call ran alone (calls at once may see each other's lines, so then only bounds)."""
        assert result.totals is not None
        quantity, total = result.totals
        if self.alone:
            held = [r for r in self.live.values() if r.user == user and r.expires_at > now]
            assert (quantity, total) == (sum(r.qty for r in held), sum(r.qty * r.unit_amount for r in held))
            event("totals: checked exactly")
        elif result.reservation.expires_at > now and not result.replay:
            own = result.reservation
            assert quantity >= own.qty and total >= own.qty * own.unit_amount
            event("totals: bounded")

    def end(self, reservation: Reservation) -> None:
        """A reservation ended (returned or sold): it must have been held, and ends only once."""
        assert self.live.pop(reservation.id) == reservation, f"{reservation.id} ended twice"

    def account_release(self, plan: tuple[Any, ...], result: Returned | None) -> None:
        _, reservation, user = plan
        if user != reservation.user:
            assert result is None
            event("release: someone else's reservation refused")
        elif result is None:
            # Ended by another call of the batch, or out of the cart for a moment: a checkout
            # of the batch took it and, its order not written, put it back.
            assert reservation.id not in self.live or reservation.id in self.undone
            event("release: already ended by another node" if reservation.id not in self.live
                  else "release: while a checkout had the line")
        else:
            assert result.reservation == reservation
            self.end(reservation)
            event("release: units returned")

    def account_expire(self, plan: tuple[Any, ...], result: list[Returned]) -> None:
        _, now = plan
        for returned in result:
            assert returned.reservation.expires_at <= now
            self.end(returned.reservation)
        event("expire: units returned" if result else "expire: nothing due")

    def account_commit(self, plan: tuple[Any, ...], result: list[Reservation]) -> None:
        _, user, now = plan
        for line in result:
            assert line.user == user and line.expires_at > now
            self.end(line)
        if result:
            self.orders.append(result)
        event("commit: order lines" if result else "commit: nothing unexpired in the cart")

    def account_unwritten(self, plan: tuple[Any, ...], result: list[Reservation]) -> None:
        _, user, now = plan
        for line in result:
            assert self.live.get(line.id) == line and line.user == user and line.expires_at > now
            self.undone.add(line.id)
        event("checkout not written: lines back in the cart" if result else "checkout not written: empty cart")

    def account_refund(self, plan: tuple[Any, ...], result: dict[str, Any]) -> None:
        assert set(result) == {line.pool for line in self.orders[plan[1]]}
        event("refund: units back on sale")

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def units_balance(self) -> None:
        if not hasattr(self, "loop"):
            return
        store = self.nodes[0]
        carts = {user: self.run(store.cart(ROOM, user)) for user in USERS}
        assert {r.id: r for cart in carts.values() for r in cart} == self.live
        for user, cart in carts.items():
            assert len({r.id for r in cart}) == len(cart) and all(r.user == user for r in cart)
        for pool, (quantity, limit) in POOLS.items():
            c = self.run(store.counters(ROOM, pool))
            assert c.quantity == quantity and c.available >= 0 and c.reserved >= 0 and c.sold >= 0
            assert c.reserved + c.sold + c.available == c.quantity
            assert c.reserved == sum(r.qty for r in self.live.values() if r.pool == pool)
            assert c.sold == sum(line.qty for order in self.orders for line in order if line.pool == pool)
            if limit is not None:
                for user in USERS:
                    held = sum(r.qty for r in self.live.values() if r.pool == pool and r.user == user)
                    sold = sum(ln.qty for order in self.orders for ln in order if ln.pool == pool and ln.user == user)
                    assert held + sold <= limit
                    if held + sold == limit:
                        event("a user holds a sale's limit")
            if c.available == 0:
                event(f"pool {pool} sold out")


def test_nodes_sharing_a_redis_keep_the_stock_invariants(shared_redis: SharedRedis) -> None:
    RedisStockMachine.redis_url = shared_redis.url
    # No shrinking: the nodes' calls really race inside Redis, so a failing case may not fail the
    # same way twice, and shrinking it would run for minutes; the steps it prints show the batches.
    run_state_machine_as_test(RedisStockMachine, settings=settings(
        max_examples=100, stateful_step_count=30, deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate]))
