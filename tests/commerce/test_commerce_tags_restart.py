"""Pinned tags are kept with the catalog: an engine stopped and started again on the same data
directory shows them in the next websocket snapshot, in pin order, and forgets unpinned ones."""

from __future__ import annotations

import aiohttp
from commercekit import MUG, Clock, Rest, joined, running

from engine.config import Config
from tests.conftest import token

CAP = {**MUG, "id": "cap", "title": "Cap", "price": 900}


async def test_pinned_tags_survive_an_engine_restart(config: Config) -> None:
    clock = Clock()
    async with running(config, clock) as app, aiohttp.ClientSession() as http:
        rest = Rest(app, http)
        host = token(app, role="host", sub="hana")
        for product in (MUG, CAP):
            assert (await rest.call("PUT", f"/api/rooms/demo/products/{product['id']}", host, product))[0] == 200
        status, body = await rest.call(
            "POST", "/api/rooms/demo/tags", host, {"id": "t-mug", "product_id": "mug", "x": 0.25, "y": 0.5})
        assert status == 201
        client, _ = await joined(app, "host", "hana")
        ack = await client.request({"type": "pin", "id": 1, "tag": {
            "id": "t-cap", "product_id": "cap", "x": 0.75, "y": 0.1, "label": "New!", "media_ts": 12.5}})
        assert ack["type"] == "ack"
        ack = await client.request({"type": "pin", "id": 2, "tag": {"product_id": "cap", "x": 0.5, "y": 0.5}})
        gone = ack["tag"]["id"]
        assert (await client.request({"type": "unpin", "id": 3, "tag_id": gone}))["type"] == "ack"
        # moving a tag keeps its place in the pin order
        ack = await client.request({"type": "pin", "id": 4, "tag": {
            "id": "t-mug", "product_id": "mug", "x": 0.3, "y": 0.6}})
        assert ack["type"] == "ack"
        _, before = await joined(app, sub="vera")
        await client.close()

    expected = [
        {"id": "t-mug", "product_id": "mug", "x": 0.3, "y": 0.6, "label": None, "media_ts": None},
        {"id": "t-cap", "product_id": "cap", "x": 0.75, "y": 0.1, "label": "New!", "media_ts": 12.5},
    ]
    assert before["tags"] == expected
    async with running(config, clock) as app, aiohttp.ClientSession() as http:
        viewer, after = await joined(app, sub="vera")
        assert after["tags"] == expected
        status, body = await Rest(app, http).call("GET", "/api/rooms/demo/tags")
        assert status == 200 and body["tags"] == expected
        # removing a product unpins its tags for good
        host = token(app, role="host", sub="hana")
        assert (await Rest(app, http).call("DELETE", "/api/rooms/demo/products/cap", host))[0] == 200
        await viewer.close()

    async with running(config, clock) as app:
        viewer, after = await joined(app, sub="vera")
        assert after["tags"] == expected[:1]
        await viewer.close()
