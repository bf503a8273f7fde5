"""Free identities: guest minting is rate-limited per address, a user's connections are capped and
share one set of rate limits, guests may be kept out of checkout, and the limiter tables stay bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from engine.app import App
from engine.config import Config
from signaling import protocol
from signaling.tokens import verify
from tests.commerce.commercekit import MUG
from tests.conftest import Client, connect, token


def _config(tmp_path: Path, **changes: Any) -> Config:
    return Config(http_port=0, ws_port=0, data_dir=str(tmp_path), secret="s" * 32, admin_key="a",
                  demo_catalog=False).replace(**changes)


@pytest.fixture
async def app(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[App]:
    app = App(_config(tmp_path, **getattr(request, "param", {})))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def _guest(app: App, source: str) -> tuple[int, dict[str, Any], str | None]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (aiohttp.ClientSession(connector=connector) as http,
                http.post(f"http://127.0.0.1:{app.http_port}/api/rooms/demo/guest") as response):
        return response.status, await response.json(), response.headers.get("Retry-After")


@pytest.mark.parametrize("app", [{"guest_rate": 0.5, "guest_burst": 5, "limiter_entries": 3}], indirect=True)
async def test_guest_minting_is_rate_limited_per_address(app: App) -> None:
    minted = [await _guest(app, "127.0.0.1") for _ in range(5)]
    assert all(status == 201 for status, _, _ in minted)
    assert verify(app.secret, minted[0][1]["token"]).guest
    status, body, retry = await asyncio.wait_for(_guest(app, "127.0.0.1"), 5)
    assert status == 429 and body["error"]["code"] == "rate_limited" and retry == "2"
    # Another address has its own budget.
    assert (await _guest(app, "127.0.0.2"))[0] == 201
    # The table of addresses is bounded: many addresses never hold more than limiter_entries.
    for i in range(3, 10):
        assert (await _guest(app, f"127.0.0.{i}"))[0] == 201
    assert len(app.guest_limiter) == 3


async def _closed_with(client: Client) -> tuple[dict[str, Any], int | None]:
    message = await client.recv()
    with pytest.raises(ConnectionClosed):
        await client.recv()
    return message, client.ws.close_code


@pytest.mark.parametrize("app", [{"max_connections_per_user": 3}], indirect=True)
async def test_connections_per_user_are_capped(app: App) -> None:
    tok = token(app, sub="mallory")
    held = [await connect(app, tok) for _ in range(3)]
    for client in held:
        await client.recv_type("snapshot")
    refused, code = await _closed_with(await connect(app, tok))
    assert refused["code"] == "too_many_connections" and code == protocol.CLOSE_FLOOD
    # Other users are not affected, nor the same sub in another room (a user is a sub in a room).
    other = await connect(app, token(app, sub="olga"))
    await other.recv_type("snapshot")
    await app.rooms.create("other")
    elsewhere = [await connect(app, token(app, room="other", sub="mallory")) for _ in range(3)]
    for client in elsewhere:
        await client.recv_type("snapshot")
    # A freed slot can be used again.
    await held.pop().close()
    for _ in range(100):
        if len(app.channel.sessions) == 6:
            break
        await asyncio.sleep(0.02)
    again = await connect(app, tok)
    assert (await again.recv())["type"] == "snapshot"
    for client in (*held, other, *elsewhere, again):
        await client.close()


@pytest.mark.parametrize("app", [{"chat_rate": 0.01, "chat_burst": 5, "max_connections_per_user": 20}],
                         indirect=True)
async def test_chat_limit_is_per_user_across_connections_and_reconnects(app: App) -> None:
    tok = token(app, sub="spammer")
    clients = [await connect(app, tok) for _ in range(10)]
    for client in clients:
        await client.recv_type("snapshot")
    replies = await asyncio.gather(*[c.request({"type": "chat", "id": i, "text": "buy!"})
                                     for i, c in enumerate(clients)])
    assert sorted(r["type"] for r in replies) == ["ack"] * 5 + ["error"] * 5
    assert {r["code"] for r in replies if r["type"] == "error"} == {"rate_limited"}
    # Reconnecting does not refill the budget.
    for client in clients:
        await client.close()
    fresh = await connect(app, tok)
    await fresh.recv_type("snapshot")
    assert (await fresh.request({"type": "chat", "id": "again", "text": "buy!"}))["code"] == "rate_limited"
    await fresh.close()
    # Someone else still chats.
    other = await connect(app, token(app, sub="olga"))
    await other.recv_type("snapshot")
    assert (await other.request({"type": "chat", "id": 1, "text": "hello"}))["type"] == "ack"
    await other.close()


@pytest.mark.parametrize("app", [{"limiter_entries": 5}], indirect=True)
async def test_user_table_is_bounded(app: App) -> None:
    for i in range(20):
        client = await connect(app, token(app, sub=f"u{i}"))
        await client.recv_type("snapshot")
        await client.close()
    for _ in range(100):
        if not app.channel.sessions:
            break
        await asyncio.sleep(0.02)
    assert app.channel.users.sizes() == (0, 5)


async def _sale(app: App) -> Client:
    host = await connect(app, token(app, role="host", sub="hana"))
    await host.recv_type("snapshot")
    assert (await host.request({"type": "product.put", "id": 1, "product": MUG}))["type"] == "ack"
    reply = await host.request({"type": "sale.start", "id": 2, "sale": {
        "id": "flash", "product_id": "mug", "price": 500, "quantity": 5, "per_user_limit": 1, "duration": 60}})
    assert reply["type"] == "ack"
    return host


@pytest.mark.parametrize("app", [{"guest_checkout": False}], indirect=True)
async def test_no_guest_checkout_lets_guests_watch_and_chat_but_not_buy(app: App) -> None:
    host = await _sale(app)
    status, body, _ = await _guest(app, "127.0.0.1")
    assert status == 201
    guest = await connect(app, body["token"])
    await guest.recv_type("snapshot")
    assert (await guest.request({"type": "chat", "id": 1, "text": "nice"}))["type"] == "ack"
    refused = await guest.request({"type": "tap", "id": 2, "sale_id": "flash"})
    assert refused["type"] == "error" and refused["code"] == "forbidden"
    refused = await guest.request({"type": "checkout", "id": 3})
    assert refused["type"] == "error" and refused["code"] == "forbidden"
    # A customer with a token from the shop buys.
    customer = await connect(app, token(app, sub="customer-17"))
    await customer.recv_type("snapshot")
    assert (await customer.request({"type": "tap", "id": 4, "sale_id": "flash"}))["type"] == "ack"
    for client in (host, guest, customer):
        await client.close()


async def test_guests_buy_by_default(app: App) -> None:
    host = await _sale(app)
    status, body, _ = await _guest(app, "127.0.0.1")
    guest = await connect(app, body["token"])
    await guest.recv_type("snapshot")
    assert (await guest.request({"type": "tap", "id": 1, "sale_id": "flash"}))["type"] == "ack"
    for client in (host, guest):
        await client.close()
