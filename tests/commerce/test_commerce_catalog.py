"""Issue points 1 and 2: hosts manage the catalog and pin product tags (REST and websocket)."""

from __future__ import annotations

from commercekit import MUG, Rest, joined

from engine.app import App
from tests.conftest import token


async def test_host_manages_the_catalog_over_rest_and_viewers_see_events(app: App, rest: Rest) -> None:
    viewer, snap = await joined(app, sub="vera")
    assert snap["products"] == [] and snap["cart"]["lines"] == []
    host = token(app, role="host", sub="hana")

    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", host, MUG)
    assert status == 200
    assert body["product"] == {**MUG, "available": 10}
    put = await viewer.recv_type("product.put")
    assert put["id"] == "mug" and put["price"] == 1200 and "seq" in put
    stock = await viewer.recv_type("product.stock")
    assert stock["key"] == "product.stock:mug" and stock["available"] == 10

    # A partial update keeps the other fields; a stock change is a (state) event.
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", host, {"stock": 25})
    assert status == 200 and body["product"]["stock"] == 25 and body["product"]["title"] == "Mug"
    assert (await viewer.recv_type("product.stock"))["available"] == 25

    status, body = await rest.call("GET", "/api/rooms/demo/products")
    assert status == 200 and [p["id"] for p in body["products"]] == ["mug"]
    status, body = await rest.call("GET", "/api/rooms/demo/products/mug")
    assert status == 200 and body["product"]["available"] == 25

    status, body = await rest.call("DELETE", "/api/rooms/demo/products/mug", host)
    assert status == 200 and body == {"product": "mug"}
    assert (await viewer.recv_type("product.removed"))["product"] == "mug"
    status, body = await rest.call("GET", "/api/rooms/demo/products/mug")
    assert status == 404 and body["error"]["code"] == "not_found"
    await viewer.close()


async def test_host_manages_the_catalog_over_the_websocket(app: App, rest: Rest) -> None:
    host, _ = await joined(app, "host", "hana")
    viewer, _ = await joined(app, sub="vera")
    ack = await host.request({"type": "product.put", "id": 1, "product": MUG})
    assert ack["type"] == "ack" and ack["product"] == {**MUG, "available": 10}
    assert (await viewer.recv_type("product.put"))["title"] == "Mug"
    ack = await host.request({"type": "product.put", "id": 2, "product": {"id": "mug", "price": 999}})
    assert ack["product"]["price"] == 999 and ack["product"]["stock"] == 10
    ack = await host.request({"type": "product.remove", "id": 3, "product_id": "mug"})
    assert ack["product"] == "mug"
    assert (await viewer.recv_type("product.removed"))["product"] == "mug"
    # The same product again starts a fresh stock pool.
    ack = await host.request({"type": "product.put", "id": 4, "product": {**MUG, "stock": 3}})
    assert ack["product"]["available"] == 3
    await host.close()
    await viewer.close()


async def test_tags_pin_and_unpin_and_are_in_every_snapshot(app: App, rest: Rest) -> None:
    host_token = token(app, role="host", sub="hana")
    host, _ = await joined(app, "host", "hana")
    viewer, _ = await joined(app, sub="vera")
    await host.request({"type": "product.put", "id": 1, "product": MUG})
    await host.request({"type": "product.put", "id": 2, "product": {**MUG, "id": "cap", "title": "Cap"}})

    ack = await host.request({"type": "pin", "id": 3,
                              "tag": {"id": "t1", "product_id": "mug", "x": 0.25, "y": 0.5,
                                      "label": "This mug", "media_ts": 12.5}})
    assert ack["tag"] == {"id": "t1", "product_id": "mug", "x": 0.25, "y": 0.5, "label": "This mug",
                          "media_ts": 12.5}
    pinned = await viewer.recv_type("tag.pinned")
    assert pinned["id"] == "t1" and pinned["x"] == 0.25
    # Without an id the server names the tag; over REST too.
    ack = await host.request({"type": "pin", "id": 4, "tag": {"product_id": "cap", "x": 0.8, "y": 0.1}})
    generated = ack["tag"]["id"]
    assert generated and ack["tag"]["label"] is None
    status, body = await rest.call("POST", "/api/rooms/demo/tags", host_token,
                                   {"id": "t3", "product_id": "cap", "x": 0, "y": 1})
    assert status == 201 and body["tag"]["id"] == "t3"

    late, snap = await joined(app, sub="lena")
    assert [t["id"] for t in snap["tags"]] == ["t1", generated, "t3"]
    assert {p["id"] for p in snap["products"]} == {"mug", "cap"}

    ack = await host.request({"type": "unpin", "id": 5, "tag_id": "t1"})
    assert ack["tag"] == "t1"
    assert (await late.recv_type("tag.unpinned"))["tag"] == "t1"
    status, body = await rest.call("DELETE", f"/api/rooms/demo/tags/{generated}", host_token)
    assert status == 200 and body == {"tag": generated}
    status, body = await rest.call("GET", "/api/rooms/demo/tags")
    assert [t["id"] for t in body["tags"]] == ["t3"]

    # Tags must point at a product on the frame.
    error = await host.request({"type": "pin", "id": 6, "tag": {"product_id": "nope", "x": 0.5, "y": 0.5}})
    assert error["type"] == "error" and error["code"] == "not_found"
    error = await host.request({"type": "pin", "id": 7, "tag": {"product_id": "mug", "x": 1.5, "y": 0.5}})
    assert error["code"] == "bad_request"
    status, body = await rest.call("DELETE", "/api/rooms/demo/tags/t1", host_token)
    assert status == 404
    for client in (host, viewer, late):
        await client.close()


async def test_host_calls_need_a_host_of_that_room(app: App, rest: Rest) -> None:
    await app.rooms.create("other")
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", None, MUG)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", token(app, role="viewer"), MUG)
    assert status == 403
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", token(app, "other", "host"), MUG)
    assert status == 403
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", app.admin_key, MUG)
    assert status == 200
    status, body = await rest.call("PUT", "/api/rooms/nowhere/products/mug", app.admin_key, MUG)
    assert status == 404
    status, body = await rest.call("PUT", "/api/rooms/demo/products/mug", app.admin_key, {**MUG, "id": "cap"})
    assert status == 400
