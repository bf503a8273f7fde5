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
    assert settings == {"ws": f"ws://127.0.0.1:{engine.ws_port}/ws",
                        "room": {"id": "demo", "title": "Demo room", "private": False, "hls_only": False}}
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


async def raw_get(app: App, path: str, host: str) -> tuple[int, bytes]:
    """A GET with exactly this Host header (a client library would refuse or rewrite most of them)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


BAD_HOSTS = ["a b", "x:99999", "a/b", "a?b", "a#b", "[::1]:80:80", "a@b", "[zz]", "-bad-", "[::1", "ex%41mple",
             "a..b", "_", "1.2.3.4.5", ":80", "x" * 300, "x:0", "evil.example:80@other"]


async def test_a_malformed_host_never_fails_a_page(engine: App) -> None:
    """A Host that is not a hostname or IP literal with a valid port is ignored: the page gets the
    configured websocket URL, never a 500 and never the header's text."""
    configured = f"ws://127.0.0.1:{engine.ws_port}/ws"
    for path in ("/watch/demo", "/studio/demo", "/", "/watch/nowhere"):
        for host in BAD_HOSTS:
            status, body = await raw_get(engine, path, host)
            assert status in (200, 404), (path, host, status)
            settings = orjson.loads(SETTINGS.search(body.decode()).group(1))
            assert settings["ws"] == configured, (path, host)


async def test_valid_hosts_are_still_used(engine: App) -> None:
    for host, ws_host in [("shop.example", "shop.example"), ("10.0.0.7:8080", "10.0.0.7"), ("[::1]:80", "[::1]"),
                          ("localhost", "localhost"), ("xn--bcher-kva.example", "xn--bcher-kva.example")]:
        status, body = await raw_get(engine, "/watch/demo", host)
        assert status == 200
        settings = orjson.loads(SETTINGS.search(body.decode()).group(1))
        assert settings["ws"] == f"ws://{ws_host}:{engine.ws_port}/ws", host
