"""StockStore contract: runs against every backend in conftest.STOCK_BACKENDS."""

from __future__ import annotations

import pytest

from overlays.events import DomainError

R = "room1"


async def test_define_and_counters(stock) -> None:
    counters = await stock.define(R, "p", 5)
    assert (counters.quantity, counters.available, counters.reserved, counters.sold) == (5, 5, 0, 0)
    assert await stock.counters(R, "missing") is None
    assert await stock.counters("other-room", "p") is None


async def test_reserve_counts_and_idempotency(stock) -> None:
    await stock.define(R, "p", 5)
    first = await stock.reserve(R, "p", "u1", "req1", 2, None, 100.0, 5)
    assert first.ok and first.available == 3 and first.reservation.qty == 2
    again = await stock.reserve(R, "p", "u1", "req1", 2, None, 100.0, 5)
    assert again.replay and not first.replay and again._replace(replay=False) == first
    assert (await stock.counters(R, "p")).reserved == 2
    other_user = await stock.reserve(R, "p", "u2", "req1", 1, None, 100.0, 5)
    assert other_user.ok and other_user.reservation.id != first.reservation.id


async def test_reserve_refusals(stock) -> None:
    await stock.define(R, "p", 3)
    assert (await stock.reserve(R, "p", "u", "a", 4, None, 1.0, 5)).code == "sold_out"
    assert (await stock.reserve(R, "p", "u", "b", 0, None, 1.0, 5)).code == "bad_request"
    assert (await stock.reserve(R, "nope", "u", "c", 1, None, 1.0, 5)).code == "not_found"
    assert (await stock.reserve(R, "p", "u", "d", 2, 2, 1.0, 5)).ok
    assert (await stock.reserve(R, "p", "u", "e", 1, 2, 1.0, 5)).code == "limit_reached"
    failed = await stock.reserve(R, "p", "u", "a", 1, None, 1.0, 5)  # a retried failure stays failed
    assert failed.code == "sold_out"


async def test_release_only_own_reservation(stock) -> None:
    await stock.define(R, "p", 3)
    res = (await stock.reserve(R, "p", "u1", "x", 2, None, 10.0, 5)).reservation
    assert await stock.release(R, "u2", res.id) is None
    assert await stock.release("other", "u1", res.id) is None
    returned = await stock.release(R, "u1", res.id)
    assert returned.reservation == res and returned.available == 3
    assert await stock.release(R, "u1", res.id) is None
    assert await stock.cart(R, "u1") == []


async def test_expire_returns_units(stock) -> None:
    await stock.define(R, "p", 4)
    await stock.reserve(R, "p", "u1", "a", 1, None, 10.0, 5)
    await stock.reserve(R, "p", "u2", "b", 2, None, 20.0, 5)
    assert await stock.expire(R, 9.9) == []
    gone = await stock.expire(R, 10.0)
    assert [g.reservation.user for g in gone] == ["u1"] and gone[0].available == 2
    assert [g.reservation.user for g in await stock.expire(R, 100.0)] == ["u2"]
    assert (await stock.counters(R, "p")).available == 4


async def test_commit_and_refund(stock) -> None:
    await stock.define(R, "p", 5)
    await stock.define(R, "s", 2)
    await stock.reserve(R, "p", "u", "a", 2, None, 10.0, 5)
    await stock.reserve(R, "s", "u", "b", 1, 1, 5.0, 5)
    lines = await stock.commit(R, "u", 6.0)  # the sale reservation expired at 5.0
    assert [(x.pool, x.qty) for x in lines] == [("p", 2)]
    assert (await stock.counters(R, "p")).sold == 2
    assert await stock.commit(R, "u", 6.0) == []
    assert [r.pool for r in await stock.cart(R, "u")] == ["s"]
    assert {pool: c.available for pool, c in (await stock.refund(R, lines)).items()} == {"p": 5}
    counters = await stock.counters(R, "p")
    assert (counters.sold, counters.available) == (0, 5)


async def test_limit_counts_sold_units(stock) -> None:
    await stock.define(R, "s", 10)
    await stock.reserve(R, "s", "u", "a", 2, 2, 10.0, 5)
    lines = await stock.commit(R, "u", 1.0)
    assert (await stock.reserve(R, "s", "u", "b", 1, 2, 10.0, 5)).code == "limit_reached"
    await stock.refund(R, lines)
    assert (await stock.reserve(R, "s", "u", "c", 1, 2, 10.0, 5)).ok


async def test_define_resize_and_conflicts(stock) -> None:
    await stock.define(R, "p", 5)
    await stock.reserve(R, "p", "u", "a", 3, None, 10.0, 5)
    with pytest.raises(DomainError) as err:
        await stock.define(R, "p", 2)
    assert err.value.code == "conflict"
    assert (await stock.define(R, "p", 8)).available == 5
    with pytest.raises(DomainError):
        await stock.drop(R, "p")
    with pytest.raises(DomainError):
        await stock.define(R, "p", 8, {"u": 1})  # cannot reset a pool with reservations
    await stock.expire(R, 11.0)
    await stock.drop(R, "p")
    await stock.drop(R, "p")
    assert await stock.counters(R, "p") is None


async def test_define_with_sold_by_rebuilds(stock) -> None:
    counters = await stock.define(R, "s", 5, {"u1": 2, "u2": 1})
    assert (counters.sold, counters.available) == (3, 2)
    assert (await stock.reserve(R, "s", "u1", "a", 1, 2, 1.0, 5)).code == "limit_reached"
    with pytest.raises(DomainError):
        await stock.define(R, "s", 2, {"u1": 3})


async def test_refund_of_dropped_pool_is_skipped(stock) -> None:
    await stock.define(R, "p", 2)
    await stock.reserve(R, "p", "u", "a", 1, None, 10.0, 5)
    lines = await stock.commit(R, "u", 1.0)
    await stock.drop(R, "p")
    assert await stock.refund(R, lines) == {}


async def test_reservation_locks_the_unit_price(stock) -> None:
    await stock.define(R, "p", 5)
    first = await stock.reserve(R, "p", "u", "a", 2, None, 100.0, 1500)
    assert first.reservation.unit_amount == 1500
    again = await stock.reserve(R, "p", "u", "a", 2, None, 100.0, 99900)  # a retry keeps the first price
    assert again.reservation == first.reservation
    assert [r.unit_amount for r in await stock.cart(R, "u")] == [1500]
    assert [r.unit_amount for r in await stock.commit(R, "u", 1.0)] == [1500]


async def test_idempotency_lasts_the_hold_time_whatever_other_users_do(stock) -> None:
    await stock.define(R, "p", 10**6)
    first = await stock.reserve(R, "p", "u", "a", 1, None, 100.0, 5)
    for n in range(3000):  # other users' traffic, past any per-user bound
        await stock.reserve(R, "p", f"other{n % 3}", f"r{n}", 1, None, 100.0 + n, 5)
    await stock.expire(R, 99.0)
    again = await stock.reserve(R, "p", "u", "a", 1, None, 100.0, 5)
    assert again.replay and again.reservation == first.reservation
    assert [r.id for r in await stock.cart(R, "u")] == [first.reservation.id]
    await stock.expire(R, 100.0)  # the hold is over: units back, the request id forgotten
    assert await stock.cart(R, "u") == []
    fresh = await stock.reserve(R, "p", "u", "a", 1, None, 200.0, 5)
    assert fresh.ok and not fresh.replay and fresh.reservation.id != first.reservation.id


async def test_a_users_remembered_taps_are_bounded_oldest_first(stock) -> None:
    """Past the per-user bound a user's oldest tap results go first (a retry of one is a new tap);
    their later ones and other users' stay."""
    stock.max_user_requests = 3
    await stock.define(R, "p", 100)
    other = await stock.reserve(R, "p", "v", "x", 1, None, 100.0, 5)
    firsts = [await stock.reserve(R, "p", "u", f"t{n}", 1, None, 100.0, 5) for n in range(5)]
    for n in (2, 3, 4):
        again = await stock.reserve(R, "p", "u", f"t{n}", 1, None, 100.0, 5)
        assert again.replay and again.reservation == firsts[n].reservation
    again = await stock.reserve(R, "p", "v", "x", 1, None, 100.0, 5)
    assert again.replay and again.reservation == other.reservation
    fresh = await stock.reserve(R, "p", "u", "t0", 1, None, 100.0, 5)
    assert fresh.ok and not fresh.replay and fresh.reservation.id != firsts[0].reservation.id
    assert (await stock.counters(R, "p")).reserved == 7


async def test_refusals_are_remembered_for_the_hold_time(stock) -> None:
    await stock.define(R, "p", 1)
    assert (await stock.reserve(R, "p", "u", "a", 2, None, 10.0, 5)).code == "sold_out"
    await stock.define(R, "p", 5)
    assert (await stock.reserve(R, "p", "u", "a", 2, None, 10.0, 5)).code == "sold_out"
    await stock.expire(R, 10.0)
    assert (await stock.reserve(R, "p", "u", "a", 2, None, 20.0, 5)).ok


async def test_refusals_the_caller_decided_share_the_request_memory(stock) -> None:
    await stock.define(R, "p", 5)
    refused = await stock.refuse(R, "u", "a", "sale_not_live", "sale s is scheduled", 10.0)
    assert (refused.code, refused.message, refused.replay, refused.reservation) == (
        "sale_not_live", "sale s is scheduled", False, None)
    again = await stock.reserve(R, "p", "u", "a", 1, None, 10.0, 5)  # the same id, reservable now
    assert again.replay and again._replace(replay=False) == refused
    assert (await stock.counters(R, "p")).reserved == 0
    first = await stock.reserve(R, "p", "u", "b", 1, None, 10.0, 5)
    back = await stock.refuse(R, "u", "b", "sale_not_live", "sale s is ended", 10.0)  # a retry, refused now
    assert back.replay and back.reservation == first.reservation
    await stock.expire(R, 10.0)  # the hold is over: both ids are forgotten
    fresh = await stock.refuse(R, "u", "a", "not_found", "no such sale", 20.0)
    assert not fresh.replay and fresh.code == "not_found"
    assert (await stock.reserve(R, "p", "u", "b", 1, None, 20.0, 5)).ok


async def test_a_commit_retried_with_its_request_id_sells_nothing_more(stock) -> None:
    await stock.define(R, "p", 5)
    await stock.reserve(R, "p", "u", "a", 2, None, 10.0, 5)
    lines = await stock.commit(R, "u", 1.0, "c1")
    assert [line.qty for line in lines] == [2]
    assert await stock.commit(R, "u", 1.0, "c1") == lines  # its reply was lost: the same lines again
    assert await stock.commit(R, "u", 1.0, "c2") == []
    assert (await stock.counters(R, "p")).sold == 2
    await stock.restore(R, lines)  # the order could not be written: back in the cart, nothing remembered
    assert [r.id for r in await stock.cart(R, "u")] == [lines[0].id]
    assert await stock.commit(R, "u", 1.0, "c1") == lines  # a retry sells them (once)
    assert (await stock.counters(R, "p")).sold == 2
    await stock.expire(R, 10.0)  # past the lines' hold the commit is forgotten
    assert await stock.commit(R, "u", 11.0, "c1") == []
    assert (await stock.counters(R, "p")).sold == 2


async def test_a_closed_pool_refuses_taps_and_keeps_its_carts(stock) -> None:
    await stock.define(R, "s", 5)
    held = await stock.reserve(R, "s", "u", "a", 2, None, 100.0, 5)
    await stock.close_pool(R, "s", "sale s is ended")
    await stock.close_pool(R, "s", "another message")  # idempotent: the first message stays
    refused = await stock.reserve(R, "s", "v", "b", 1, None, 100.0, 5)
    assert (refused.code, refused.message, refused.reservation) == ("sale_not_live", "sale s is ended", None)
    assert (await stock.reserve(R, "s", "v", "b", 1, None, 100.0, 5)).code == "sale_not_live"  # a retry
    assert [r.id for r in await stock.cart(R, "u")] == [held.reservation.id]
    assert len(await stock.commit(R, "u", 1.0)) == 1
    counters = await stock.define(R, "s", 5, {"u": 2})  # a restart's reset keeps it closed
    assert counters.sold == 2
    assert (await stock.reserve(R, "s", "v", "c", 1, None, 100.0, 5)).code == "sale_not_live"
    await stock.close_pool(R, "missing", "x")  # no such pool: nothing happens
    assert await stock.counters(R, "missing") is None


async def test_a_reservations_totals_when_given_are_the_unexpired_lines_at_its_time(stock) -> None:
    """A store that counts the cart in the tap's own step (totals not None) counts exactly the lines
    unexpired at the call's `now`, whatever was released, committed or left unexpired-but-unswept."""
    await stock.define(R, "p", 100)

    async def check(request: str, qty: int, until: float, now: float) -> None:
        result = await stock.reserve(R, "p", "u", request, qty, None, until, 7, now)
        assert result.ok
        if result.totals is not None:
            held = [r for r in await stock.cart(R, "u") if r.expires_at > now]
            assert result.totals == (sum(r.qty for r in held), sum(r.qty * r.unit_amount for r in held))

    await check("a", 2, 10.0, 1.0)
    await check("b", 3, 50.0, 2.0)
    first = (await stock.cart(R, "u"))[0]
    await stock.release(R, "u", first.id)
    await check("c", 1, 60.0, 3.0)
    await check("d", 1, 15.0, 4.0)
    await check("e", 4, 70.0, 20.0)  # "d" expired at 15 and no clock has swept it
    await stock.expire(R, 20.0)
    await check("f", 1, 80.0, 21.0)
    await stock.commit(R, "u", 22.0)
    await check("g", 5, 90.0, 23.0)
