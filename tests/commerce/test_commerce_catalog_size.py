"""A room's catalog is bounded in encoded size, so every viewer's snapshot fits its send queue; the
public view is built once per change and shared, and single lookups do not build it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from commercekit import MUG, Rest, joined

from engine.app import App
from engine.config import Config
from tests.conftest import Client
from tests.looplag import MAX_STALL, loop_lag

# 4,000 characters of three bytes each in UTF-8: a 12 KB description, within every field limit.
BIG = {**MUG, "description": "\u20ac" * 4000, "stock": 100}


async def _fill(host: Client, count: int) -> list[dict[str, Any]]:
    """Put up to `count` big products; the replies (acks, then refusals once the catalog is full)."""
    replies = []
    for i in range(count):
        reply = await host.request({"type": "product.put", "id": i, "product": {**BIG, "id": f"p{i}"}})
        replies.append(reply)
        if reply["type"] == "error":
            break
    return replies


async def test_a_host_filling_the_catalog_is_refused_past_its_encoded_size(app: App, config: Config,
                                                                           rest: Rest) -> None:
    host, _ = await joined(app, "host", "hana")
    replies = await _fill(host, 100)
    refusal = replies[-1]
    assert refusal["type"] == "error" and refusal["code"] == "full" and "bytes" in refusal["message"]
    accepted = len(replies) - 1
    assert accepted > 0
    _, listed = await rest.call("GET", "/api/rooms/demo/products")
    assert len(listed["products"]) == accepted
    assert len(orjson.dumps(listed["products"])) <= config.max_catalog_bytes
    # A full catalog still takes edits that do not make it bigger, and room is made by removing.
    smaller = await host.request({"type": "product.put", "id": "s", "product": {"id": "p0", "description": "x"}})
    assert smaller["type"] == "ack"
    assert (await host.request({"type": "product.put", "id": "n", "product": {**BIG, "id": "new"}}))["type"] == "ack"
    await host.close()


@pytest.mark.parametrize("field, value", [
    ("description", "\x00" * 4000), ("title", "a\x07b"), ("description", "x" * 4001), ("title", "t" * 201),
    ("image_url", "/" + "i" * 2048),
])
async def test_product_fields_are_bounded(app: App, field: str, value: str) -> None:
    host, _ = await joined(app, "host", "hana")
    reply = await host.request({"type": "product.put", "id": 1, "product": {**MUG, field: value}})
    assert reply["type"] == "error" and reply["code"] == "bad_request"
    ok = await host.request({"type": "product.put", "id": 2, "product": {**MUG, "description": "line\r\nline\tx"}})
    assert ok["type"] == "ack"
    await host.close()


@pytest.fixture
def config(config: Config) -> Config:
    """Lagging clients are closed soon, so a snapshot that can never be sent fails the test quickly."""
    return config.replace(slow_close_after=3.0)


async def test_viewers_of_a_full_catalog_get_their_snapshot_without_stalling_the_loop(app: App, rest: Rest) -> None:
    """Hosts try to put 500 big products; however many are accepted, every viewer gets its snapshot
    and the loop is never held (a catalog bigger than the send queue left every viewer without a
    snapshot and rebuilt it every 100 ms per viewer until they were closed)."""
    host, _ = await joined(app, "host", "hana")
    await _fill(host, 500)
    async with loop_lag() as lag:
        viewers = await asyncio.gather(*[joined(app, sub=f"guest{i}", max_size=None) for i in range(6)])
        await asyncio.sleep(0.5)
    _, listed = await rest.call("GET", "/api/rooms/demo/products")
    for client, snapshot in viewers:
        assert snapshot["products"] == listed["products"]
        assert len(orjson.dumps(snapshot)) < app.config.send_queue_bytes // 2
        await client.close()
    assert lag.worst < MAX_STALL, lag.worst
    await host.close()


async def test_list_and_lookups_of_a_full_catalog_do_not_stall(app: App, rest: Rest) -> None:
    host, _ = await joined(app, "host", "hana")
    await _fill(host, 500)
    async with loop_lag() as lag:
        lists = await asyncio.gather(*[rest.call("GET", "/api/rooms/demo/products") for _ in range(8)])
        one = await asyncio.gather(*[rest.call("GET", f"/api/rooms/demo/products/p{i}") for i in range(10)])
    assert all(status == 200 for status, _ in lists) and lists[0][1] == lists[-1][1]
    assert [body["product"]["id"] for _, body in one] == [f"p{i}" for i in range(10)]
    assert lag.worst < MAX_STALL, lag.worst
    await host.close()


async def test_each_snapshot_shows_the_latest_change(app: App, rest: Rest) -> None:
    """The shared view is dropped by every change: a tap, a price edit, a sale and its end, a removal."""
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    await host.request({"type": "product.put", "id": 2, "product": {**MUG, "id": "cap", "title": "Cap"}})
    await host.request({"type": "product.put", "id": 2, "product": {**MUG, "id": "hat", "title": "Hat"}})
    viewer, snap = await joined(app, sub="vera")
    assert {p["id"]: p["available"] for p in snap["products"]} == {"mug": 10, "cap": 10, "hat": 10}
    assert (await viewer.request({"type": "tap", "id": "t1", "product_id": "mug", "qty": 3}))["type"] == "ack"
    _, snap = await joined(app, sub="walt")
    assert {p["id"]: p["available"] for p in snap["products"]} == {"mug": 7, "cap": 10, "hat": 10}
    _, body = await rest.call("GET", "/api/rooms/demo/products/mug")
    assert body["product"]["available"] == 7
    await host.request({"type": "product.put", "id": 3, "product": {"id": "cap", "price": 99}})
    await host.request({"type": "sale.start", "id": 4, "sale": {"id": "s1", "product_id": "cap", "price": 50,
                                                                "quantity": 2, "duration": 60}})
    _, snap = await joined(app, sub="xena")
    assert [p["price"] for p in snap["products"] if p["id"] == "cap"] == [99]
    assert [(s["id"], s["state"]) for s in snap["sales"]] == [("s1", "live")]
    await host.request({"type": "sale.end", "id": 5, "sale_id": "s1"})
    _, snap = await joined(app, sub="yuri")
    assert [(s["id"], s["state"]) for s in snap["sales"]] == [("s1", "ended")]
    assert (await host.request({"type": "product.remove", "id": 7, "product_id": "hat"}))["type"] == "ack"
    _, snap = await joined(app, sub="zoe")
    assert [p["id"] for p in snap["products"]] == ["mug", "cap"]
    await host.close()
    await viewer.close()
