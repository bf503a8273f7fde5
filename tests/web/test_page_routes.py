"""The page routes over real HTTP: embedded settings, websocket URL, escaping, static files, 404s."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson

from engine.app import App
from engine.config import Config

SETTINGS = re.compile(r'<script id="livecart-config" type="application/json">(.*?)</script>', re.S)


async def fetch(app: App, path: str, **headers: str) -> tuple[int, str, dict[str, Any]]:
    """Status, body and the page's embedded settings (empty when there are none)."""
    url = f"http://127.0.0.1:{app.http_port}{path}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        body = await response.text()
        found = SETTINGS.search(body)
        return response.status, body, orjson.loads(found.group(1)) if found else {}


async def test_pages_embed_the_websocket_url_for_the_host_the_browser_used(engine: App) -> None:
    status, _, settings = await fetch(engine, "/watch/demo")
    assert status == 200
    assert settings == {"ws": f"ws://127.0.0.1:{engine.ws_port}/ws", "room": {"id": "demo", "title": "Demo room"}}
    _, _, settings = await fetch(engine, "/studio/demo", Host=f"shop.example:{engine.http_port}")
    assert settings["ws"] == f"ws://shop.example:{engine.ws_port}/ws"
    _, _, settings = await fetch(engine, "/", Host=f"[::1]:{engine.http_port}")
    assert settings == {"ws": f"ws://[::1]:{engine.ws_port}/ws", "room": None}


async def test_public_url_decides_the_websocket_url(config: Config) -> None:
    app = App(config.replace(public_url="https://live.example.com:8443"))
    await app.start()
    try:
        _, _, settings = await fetch(app, "/watch/demo")
        assert settings["ws"] == f"wss://live.example.com:{app.ws_port}/ws"
    finally:
        await app.stop()


async def test_a_room_title_cannot_close_the_settings_script(engine: App) -> None:
    title = '</script><script>alert(1)</script>'
    admin = {"Authorization": "Bearer test-admin"}
    async with aiohttp.ClientSession(headers=admin) as http, http.post(
            f"http://127.0.0.1:{engine.http_port}/api/rooms", json={"id": "tricky", "title": title}) as response:
        assert response.status == 201
    status, body, settings = await fetch(engine, "/watch/tricky")
    assert status == 200
    assert settings["room"]["title"] == title
    assert "<script>alert(1)" not in body


async def test_unknown_rooms_and_files(engine: App) -> None:
    status, body, settings = await fetch(engine, "/studio/nowhere")
    assert status == 404 and settings["room"] == {"id": "nowhere", "missing": True}
    assert "/web/lobby.js" in body
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        async with http.get(f"{base}/web/livecart.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        async with http.get(f"{base}/web/livecart.css") as response:
            assert response.status == 200 and response.content_type == "text/css"
        async with http.get(f"{base}/web/..%2Fshop.py") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
