"""Issue point 7: services read purchase events (CloudEvents) over the websocket and HTTP, resume
after a reconnect from the last id with nothing lost and nothing twice, and learn when they are
further behind than the log keeps."""

from __future__ import annotations

import asyncio

import websockets
from commercekit import MUG, Clock, Rest, joined, no_message, running

from engine.app import App
from engine.config import Config
from tests.conftest import Client, connect, token


async def _buy(app: App, buyer: Client, n: int) -> str:
    await buyer.request({"type": "tap", "id": f"t{n}", "product_id": "mug"})
    return (await buyer.request({"type": "checkout", "id": f"o{n}"}))["order"]["id"]


async def _service(app: App) -> Client:
    """A service for every room: it joins no room, so it gets a hello instead of a snapshot."""
    client = await connect(app, token(app, "*", "service", "ledger"))
    assert await client.recv() == {"type": "hello", "you": {"sub": "ledger", "role": "service"}}
    return client


async def _purchases(client: Client, count: int) -> list[dict]:
    return [await client.recv_type("purchase") for _ in range(count)]


async def test_subscribe_streams_the_log_and_resumes_exactly(app: App, rest: Rest) -> None:
    host, _ = await joined(app, "host", "hana")
    await host.request({"type": "product.put", "id": 1, "product": {**MUG, "stock": 100}})
    buyer, _ = await joined(app, sub="alice")
    first = [await _buy(app, buyer, n) for n in range(3)]

    service = await _service(app)
    ack = await service.request({"type": "subscribe", "id": "s"})
    assert ack["type"] == "ack" and ack["last_id"] is not None
    entries = await _purchases(service, 3)
    assert [e["event"]["subject"] for e in entries] == first
    event = entries[0]["event"]
    assert event == {**event, "specversion": "1.0", "type": "livecart.order.placed", "source": "/livecart/rooms/demo",
                     "id": f"{first[0]}.placed", "datacontenttype": "application/json"}
    assert event["time"].endswith("Z")
    data = event["data"]
    assert data == {**data, "order": first[0], "room": "demo", "host": "demo", "user": "alice", "quantity": 1,
                    "total_amount": 1200, "currency": "EUR", "status": "placed"}
    assert data["items"][0] == {**data["items"][0], "product": "mug", "sale": None, "unit_amount": 1200}
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids) and ids[-1] == ack["last_id"]

    # Live: a payment and a new order arrive as they happen.
    payments = token(app, role="service")
    await rest.call("POST", f"/api/rooms/demo/orders/{first[0]}/confirm", payments)
    live = await _purchases(service, 1)
    assert live[0]["event"]["type"] == "livecart.order.paid"
    last_seen = live[0]["id"]
    await service.close()

    # While the service is away: more orders and a cancellation.
    later = [await _buy(app, buyer, n) for n in range(3, 5)]
    await rest.call("POST", f"/api/rooms/demo/orders/{first[1]}/cancel", payments)
    service = await _service(app)
    await service.request({"type": "subscribe", "id": "s", "after": last_seen})
    resumed = await _purchases(service, 3)
    assert [(e["event"]["type"], e["event"]["subject"]) for e in resumed] == [
        ("livecart.order.placed", later[0]), ("livecart.order.placed", later[1]),
        ("livecart.order.cancelled", first[1])]
    await no_message(service, "purchase")

    # The same entries over HTTP, in pages.
    admin = app.admin_key
    status, body = await rest.call("GET", "/api/purchases?limit=4", admin)
    assert status == 200 and len(body["entries"]) == 4
    status, rest_page = await rest.call("GET", f"/api/purchases?after={body['next']}&limit=100", admin)
    all_ids = [e["id"] for e in body["entries"] + rest_page["entries"]]
    assert all_ids == sorted(set(all_ids)) and len(all_ids) == 7 and rest_page["next"] == rest_page["last_id"]
    for client in (host, buyer, service):
        await client.close()


async def test_a_room_service_sees_only_its_room(app: App, rest: Rest) -> None:
    await app.rooms.create("other")
    for room in ("demo", "other"):
        host, _ = await joined(app, "host", "hana", room=room)
        await host.request({"type": "product.put", "id": 1, "product": MUG})
        buyer, _ = await joined(app, sub="alice", room=room)
        await _buy(app, buyer, 0)
        await host.close()
        await buyer.close()
    scoped = await connect(app, token(app, "other", "service", "ledger"))
    snap = await scoped.recv_type("snapshot")
    assert snap["room"] == "other"
    await scoped.request({"type": "subscribe", "id": "s"})
    entry = await scoped.recv_type("purchase")
    assert entry["event"]["data"]["room"] == "other"
    await no_message(scoped, "purchase")
    status, body = await rest.call("GET", "/api/purchases", token(app, "other", "service"))
    assert status == 200 and [e["event"]["data"]["room"] for e in body["entries"]] == ["other"]
    status, body = await rest.call("GET", "/api/purchases", token(app, "*", "service"))
    assert [e["event"]["data"]["room"] for e in body["entries"]] == ["demo", "other"]
    status, body = await rest.call("GET", "/api/purchases", token(app, "demo", "host"))
    assert status == 403
    status, body = await rest.call("GET", "/api/purchases")
    assert status == 401
    await scoped.close()


async def test_only_services_subscribe_and_only_services_join_no_room(app: App) -> None:
    viewer, _ = await joined(app, sub="alice")
    refused = await viewer.request({"type": "subscribe", "id": "s"})
    assert refused["code"] == "forbidden"
    await viewer.close()
    nowhere = await connect(app, token(app, "*", "viewer"))
    error = await nowhere.recv()
    assert error["type"] == "error" and error["code"] == "unauthorized"
    await asyncio.wait_for(nowhere.ws.wait_closed(), 5)
    assert nowhere.ws.close_code == 4401
    service = await _service(app)
    tap = await service.request({"type": "tap", "id": "t", "product_id": "mug"})
    assert tap["code"] == "forbidden"
    bad = await service.request({"type": "subscribe", "id": "s", "after": "not-a-number"})
    assert bad["code"] == "bad_request"
    ahead = await service.request({"type": "subscribe", "id": "s2", "after": "99999"})
    assert ahead["code"] == "bad_request"
    await service.close()


async def test_a_service_behind_retention_is_told(config: Config, clock: Clock) -> None:
    async with running(config.replace(purchase_log_size=3), clock) as app:
        host, _ = await joined(app, "host", "hana")
        await host.request({"type": "product.put", "id": 1, "product": MUG})
        buyer, _ = await joined(app, sub="alice")
        service = await _service(app)
        await service.request({"type": "subscribe", "id": "s"})
        await _buy(app, buyer, 0)
        seen = (await _purchases(service, 1))[0]["id"]
        await service.close()
        for n in range(1, 6):
            await _buy(app, buyer, n)
        service = await _service(app)
        too_old = await service.request({"type": "subscribe", "id": "s", "after": seen})
        assert too_old["type"] == "error" and too_old["code"] == "too_old"
        # From the start means from the oldest entry kept.
        await service.request({"type": "subscribe", "id": "s2"})
        kept = await _purchases(service, 3)
        assert int(kept[0]["id"]) == 4 and int(kept[-1]["id"]) == 6
        async with websockets.connect(f"ws://127.0.0.1:{app.ws_port}/ws?token=forged") as ws:
            assert "unauthorized" in await ws.recv()
        for client in (host, buyer, service):
            await client.close()
