"""The REST control API, health and metrics over real HTTP."""

from __future__ import annotations

import aiohttp

from engine.app import App
from signaling.tokens import verify
from tests.conftest import connect, token

ADMIN = {"Authorization": "Bearer test-admin"}


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def test_create_get_list_rotate(engine: App) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base(engine)}/api/rooms", json={"id": "spring-drop", "title": "Spring drop"},
                             headers=ADMIN) as resp:
            assert resp.status == 201
            assert resp.headers["Location"] == "/api/rooms/spring-drop"
            created = await resp.json()
        assert created["room"]["id"] == "spring-drop" and created["room"]["title"] == "Spring drop"
        assert created["stream_key"].startswith("sk_")
        host = verify(engine.secret, created["host_token"])
        assert (host.room, host.role) == ("spring-drop", "host")

        async with http.get(f"{base(engine)}/api/rooms/spring-drop") as resp:
            room = await resp.json()
        assert resp.status == 200 and "stream_key" not in room and room["viewers"] == 0
        assert room["links"]["whip"].endswith("/whip/spring-drop")

        async with http.get(f"{base(engine)}/api/rooms") as resp:
            ids = [r["id"] for r in (await resp.json())["rooms"]]
        assert ids == ["demo", "spring-drop"]

        headers = {"Authorization": f"Bearer {created['host_token']}"}
        async with http.post(f"{base(engine)}/api/rooms/spring-drop/stream-key", headers=headers) as resp:
            rotated = await resp.json()
        assert resp.status == 200 and rotated["stream_key"] != created["stream_key"]
        assert engine.rooms.get("spring-drop").stream_key == rotated["stream_key"]


async def test_viewer_count_in_room_info(engine: App) -> None:
    client = await connect(engine)
    await client.recv_type("snapshot")
    async with aiohttp.ClientSession() as http, http.get(f"{base(engine)}/api/rooms/demo") as resp:
        assert (await resp.json())["viewers"] == 1
    await client.close()


async def test_errors_are_json_with_codes(engine: App) -> None:
    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, **kwargs) -> tuple[int, dict]:
            async with http.request(method, base(engine) + path, **kwargs) as resp:
                assert resp.content_type == "application/json"
                return resp.status, (await resp.json())["error"]

        status, error = await call("POST", "/api/rooms", json={"id": "x"})
        assert (status, error["code"]) == (401, "unauthorized")
        status, error = await call("POST", "/api/rooms", json={"id": "x"}, headers={"Authorization": "Bearer no"})
        assert (status, error["code"]) == (401, "unauthorized")
        status, error = await call("POST", "/api/rooms", data=b"{oops", headers=ADMIN)
        assert (status, error["code"]) == (400, "bad_request")
        status, error = await call("POST", "/api/rooms", json={"id": "Bad Id!"}, headers=ADMIN)
        assert (status, error["code"]) == (400, "bad_request")
        status, error = await call("POST", "/api/rooms", json={"id": "demo"}, headers=ADMIN)
        assert (status, error["code"]) == (409, "conflict")
        status, error = await call("GET", "/api/rooms/nope")
        assert (status, error["code"]) == (404, "not_found")
        status, error = await call("GET", "/api/nothing-here")
        assert (status, error["code"]) == (404, "not_found")
        status, error = await call("DELETE", "/api/rooms")
        assert (status, error["code"]) == (405, "method_not_allowed")
        viewer = {"Authorization": f"Bearer {token(engine)}"}
        status, error = await call("POST", "/api/rooms/demo/stream-key", headers=viewer)
        assert (status, error["code"]) == (403, "forbidden")
        status, error = await call("POST", "/api/rooms/demo/tokens", json={"role": "god"}, headers=ADMIN)
        assert (status, error["code"]) == (400, "bad_request")


async def test_tokens_and_guest_tokens(engine: App) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base(engine)}/api/rooms/demo/tokens", json={"role": "service", "sub": "payments"},
                             headers=ADMIN) as resp:
            minted = await resp.json()
        assert resp.status == 201
        identity = verify(engine.secret, minted["token"])
        assert (identity.role, identity.sub) == ("service", "payments")
        async with http.post(f"{base(engine)}/api/rooms/demo/guest") as resp:
            guest = await resp.json()
        assert verify(engine.secret, guest["token"]).role == "viewer"
        client = await connect(engine, guest["token"])
        assert (await client.recv())["type"] == "snapshot"
        await client.close()


async def metrics_page(app: App) -> dict[str, float]:
    """Every sample on /metrics by its name and labels, as the page writes them."""
    async with aiohttp.ClientSession() as http, http.get(f"{base(app)}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_health_and_metrics(engine: App) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{base(engine)}/healthz") as resp:
        assert resp.status == 200
        health = await resp.json()
    # This node alone: it runs the demo room's clock, holds no publisher, and is the one live node.
    node = health["node"]
    assert health["status"] == "ok" and node["id"] == engine.cluster.node_id
    assert node["clocks"] == ["demo"] and node["publishers"] == []
    assert [(n["id"], n["http_url"], n["ws_url"]) for n in node["nodes"]] == [
        (node["id"], engine.urls().base, engine.urls().ws)]
    # Counters are process-wide and earlier tests moved them too: check what this test changes.
    before = await metrics_page(engine)
    client = await connect(engine)
    await client.recv_type("snapshot")
    assert (await client.request({"type": "nonsense", "id": 1}))["code"] == "unknown_type"
    assert (await client.request({"type": "nonsense", "id": 2}))["code"] == "unknown_type"
    refused = await connect(engine, token(engine, room="nowhere"))
    assert (await refused.recv())["code"] == "not_found"
    after = await metrics_page(engine)

    def change(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert change('livecart_rejected_messages_total{code="unknown_type"}') == 2
    assert change('livecart_rejected_messages_total{code="not_found"}') == 1
    assert change('livecart_connections{role="viewer"}') == 1
    for name in ("livecart_rooms", "livecart_events_published_total", "livecart_events_delivered_total",
                 'livecart_event_delivery_seconds_bucket{le="+Inf"}'):
        assert name in after, name
    assert after["livecart_room_clocks"] == 1 and after["livecart_nodes"] == 1
    await client.close()
    await refused.close()


async def test_first_start_seeds_the_demo_room_once(config) -> None:
    seeded = config.replace(demo_catalog=True)
    app = App(seeded)
    await app.start()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base(app)}/api/rooms/demo/products") as resp:
            products = (await resp.json())["products"]
        assert [p["id"] for p in products] == ["sneaker", "hoodie", "cap"]
        async with http.delete(f"{base(app)}/api/rooms/demo/products/cap", headers=ADMIN) as resp:
            assert resp.status == 200
    await app.stop()
    # A restart keeps what the host did with the demo room instead of seeding it again.
    again = App(seeded)
    await again.start()
    async with aiohttp.ClientSession() as http, http.get(f"{base(again)}/api/rooms/demo/products") as resp:
        assert [p["id"] for p in (await resp.json())["products"]] == ["sneaker", "hoodie"]
    await again.stop()
