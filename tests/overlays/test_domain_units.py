"""Unit tests of the pure modules: validation, tags, sale phases, orders and social proof."""

from __future__ import annotations

from typing import Any

import pytest

from overlays.catalog import Catalog, Product
from overlays.events import DomainError, cloud_event, rfc3339
from overlays.idempotency import RequestMemory
from overlays.orders import Order, OrderLine, SalesStats
from overlays.sales import Sale, SaleBook
from overlays.tags import Tag, TagBoard

GOOD = {"id": "mug", "title": "Mug", "price": 1250, "currency": "EUR", "stock": 10}


def test_product_parse_defaults_and_public() -> None:
    product = Product.parse(GOOD, "pool")
    assert product.description == "" and product.image_url == ""
    assert "pool" not in product.public() and product.to_dict()["pool"] == "pool"


@pytest.mark.parametrize(
    "change",
    [
        {"id": "bad id"},
        {"id": "x" * 65},
        {"title": "   "},
        {"title": "t" * 201},
        {"price": -1},
        {"price": 10**12},
        {"price": 1.5},
        {"price": True},
        {"currency": "eur"},
        {"currency": "EURO"},
        {"stock": -1},
        {"stock": 10**8},
        {"image_url": "javascript:alert(1)"},
        {"image_url": "//evil.example/x.png"},
        {"description": 5},
    ],
)
def test_product_rejects_bad_fields(change: dict[str, Any]) -> None:
    with pytest.raises(DomainError) as err:
        Product.parse({**GOOD, **change}, "pool")
    assert err.value.code == "bad_request"


def test_catalog_bounds_and_not_found() -> None:
    catalog = Catalog(max_products=1)
    catalog.put(Product.parse(GOOD, "p1"))
    catalog.put(Product.parse({**GOOD, "price": 1}, "p1"))  # update does not count twice
    with pytest.raises(DomainError) as err:
        catalog.put(Product.parse({**GOOD, "id": "other"}, "p2"))
    assert err.value.code == "full"
    with pytest.raises(DomainError) as err:
        catalog.get("nope")
    assert err.value.code == "not_found"


def test_tags_parse_and_board() -> None:
    board = TagBoard(max_tags=2)
    board.pin(Tag.parse({"id": "t1", "product_id": "mug", "x": 0, "y": 1, "label": "Buy", "media_ts": 3.5}))
    board.pin(Tag.parse({"id": "t1", "product_id": "mug", "x": 0.5, "y": 0.5}))
    board.pin(Tag.parse({"id": "t2", "product_id": "cup", "x": 0.1, "y": 0.2}))
    with pytest.raises(DomainError) as err:
        board.pin(Tag.parse({"id": "t3", "product_id": "cup", "x": 0.1, "y": 0.2}))
    assert err.value.code == "full"
    assert [t.id for t in board.unpin_product("cup")] == ["t2"]
    assert board.unpin("t1").x == 0.5
    with pytest.raises(DomainError):
        board.unpin("t1")


@pytest.mark.parametrize(
    "fields",
    [
        {"x": 1.01, "y": 0},
        {"x": -0.1, "y": 0},
        {"x": float("nan"), "y": 0},
        {"x": "0.5", "y": 0},
        {"x": 0, "y": 0, "label": "l" * 81},
        {"x": 0, "y": 0, "media_ts": -1},
    ],
)
def test_tag_rejects_bad_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(DomainError):
        Tag.parse({"id": "t", "product_id": "mug", **fields})


def test_sale_phases_and_transitions() -> None:
    product = Product.parse(GOOD, "p")
    sale = Sale.parse(
        "s1", product, {"price": 500, "quantity": 3, "starts_at": 110, "duration": 10}, 100, "sp"
    )
    assert (sale.starts_at, sale.ends_at, sale.per_user_limit, sale.currency) == (110, 120, 1, "EUR")
    book = SaleBook(max_sales=1)
    book.add(sale, 100)
    assert book.transitions(105) == []
    assert book.transitions(110) == [(sale, "live")]
    assert sale.state(111, 0) == "sold_out" and sale.state(111, 1) == "live"
    assert book.transitions(120) == [(sale, "ended")]
    assert book.end("s1", 121) is False
    with pytest.raises(DomainError) as err:
        book.add(Sale.parse("s2", product, {"price": 1, "quantity": 1, "duration": 5}, 100, "x"), 100)
    assert err.value.code == "full"


def test_sale_skips_started_when_it_ended_between_ticks() -> None:
    sale = Sale.parse(
        "s", Product.parse(GOOD, "p"), {"price": 1, "quantity": 1, "starts_at": 10, "ends_at": 20}, 0, "x"
    )
    book = SaleBook(5)
    book.add(sale, 0)
    assert book.transitions(30) == [(sale, "ended")]


@pytest.mark.parametrize(
    "fields",
    [
        {"price": 1, "quantity": 1},  # no end
        {"price": 1, "quantity": 1, "duration": 5, "ends_at": 200},
        {"price": 1, "quantity": 0, "duration": 5},
        {"price": -5, "quantity": 1, "duration": 5},
        {"price": 1, "quantity": 1, "duration": 0},
        {"price": 1, "quantity": 1, "ends_at": 50},  # in the past
        {"price": 1, "quantity": 1, "duration": 5, "per_user_limit": 0},
        {"price": 1, "quantity": 1, "duration": 10**9},
    ],
)
def test_sale_rejects_bad_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(DomainError) as err:
        Sale.parse("s", Product.parse(GOOD, "p"), fields, 100, "x")
    assert err.value.code == "bad_request"


def order(order_id: str = "o1", placed_at: float = 100.0) -> Order:
    line = OrderLine("mug", "s1", "Mug", "pool", 2, 500, 1000)
    return Order(order_id, "room1", "host1", "u1", "req", "EUR", [line], placed_at)


def test_order_transitions_and_round_trip() -> None:
    o = order()
    assert (o.quantity, o.total) == (2, 1000)
    assert o.close("paid", 110) is True
    assert o.close("paid", 111) is False
    with pytest.raises(DomainError) as err:
        o.close("cancelled", 112)
    assert err.value.code == "conflict"
    assert Order.from_dict(o.to_dict()) == o
    assert "pool" not in o.public()["lines"][0]
    assert [r.qty for r in o.reservations()] == [2]


def test_order_cloud_event_shape() -> None:
    o = order()
    envelope = o.cloud_event("placed")
    assert envelope["specversion"] == "1.0" and envelope["type"] == "livecart.order.placed"
    assert envelope["id"] == "o1.placed" and envelope["subject"] == "o1"
    assert envelope["source"] == "/livecart/rooms/room1" and envelope["datacontenttype"] == "application/json"
    assert envelope["time"] == "1970-01-01T00:01:40.000Z"
    data = envelope["data"]
    assert (data["room"], data["host"], data["user"], data["currency"]) == ("room1", "host1", "u1", "EUR")
    assert (data["quantity"], data["total_amount"]) == (2, 1000)
    assert data["items"] == [
        {"product": "mug", "sale": "s1", "title": "Mug", "quantity": 2, "unit_amount": 500, "amount": 1000}
    ]
    assert o.cloud_event("placed") == envelope  # deterministic: a re-append dedupes


def test_rfc3339_and_cloud_event() -> None:
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    ce = cloud_event(room="r", type_="t", event_id="i", subject="s", time=0, data={})
    assert set(ce) == {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}


def test_sales_stats_window_and_totals() -> None:
    stats = SalesStats(window=60)
    stats.placed(order("o1", 100))
    stats.placed(order("o2", 130))
    assert stats.totals() == {"orders": 2, "units": 4, "revenue": {"EUR": 2000}}
    assert stats.recent() == {"window": 60, "units": 4}
    assert stats.prune(150) is False
    assert stats.prune(160) is True and stats.recent()["units"] == 2
    stats.cancelled(order("o2", 130))
    assert stats.recent()["units"] == 0 and stats.totals()["orders"] == 1


def test_domain_error_codes_are_checked() -> None:
    assert DomainError("sold_out", "x").to_dict() == {"code": "sold_out", "message": "x"}
    with pytest.raises(AssertionError):
        DomainError("made_up", "x")


def test_request_memory_is_bounded_per_user_and_by_time() -> None:
    memory: RequestMemory[str] = RequestMemory(per_user=3)
    for n in range(5):
        memory.remember("flood", f"r{n}", f"v{n}", until=100.0)
    memory.remember("calm", "r0", "mine", until=100.0)
    # the flooding user forgets only their own oldest; nobody else's
    assert [memory.get("flood", f"r{n}") for n in range(5)] == [None, None, "v2", "v3", "v4"]
    assert memory.get("calm", "r0") == "mine" and len(memory) == 4
    memory.forget(99.9)
    assert memory.get("calm", "r0") == "mine"
    memory.forget(100.0)
    assert len(memory) == 0 and memory.pending == 0 and memory.get("calm", "r0") is None
    memory.remember("u", "again", "late", until=50.0)  # times out of order: never forgotten early
    memory.remember("u", "early", "soon", until=40.0)
    memory.forget(45.0)
    assert memory.get("u", "early") == "soon"
    memory.forget(50.0)
    assert len(memory) == 0
