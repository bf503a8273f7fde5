"""The URLs clients are given: room links, the pages' websocket URL, for every shape of public URL."""

from __future__ import annotations

import re
import socket
from typing import Any

import aiohttp
import orjson
import pytest

from engine.app import App
from engine.config import Config
from engine.urls import public_urls

SETTINGS = re.compile(r'<script id="livecart-config" type="application/json">(.*?)</script>', re.S)


@pytest.mark.parametrize(("settings", "base", "ws"), [
    ({}, "http://127.0.0.1:8080", "ws://127.0.0.1:8081/ws"),
    ({"host": "0.0.0.0"}, "http://127.0.0.1:8080", "ws://127.0.0.1:8081/ws"),
    ({"host": "::"}, "http://127.0.0.1:8080", "ws://127.0.0.1:8081/ws"),
    ({"host": "::1"}, "http://[::1]:8080", "ws://[::1]:8081/ws"),
    ({"host": "10.0.0.5"}, "http://10.0.0.5:8080", "ws://10.0.0.5:8081/ws"),
    # Behind a reverse proxy on the default port: the websocket keeps its own port, with TLS.
    ({"public_url": "https://shop.example.com"}, "https://shop.example.com", "wss://shop.example.com:8081/ws"),
    ({"public_url": "https://shop.example.com/"}, "https://shop.example.com", "wss://shop.example.com:8081/ws"),
    ({"public_url": "https://live.example.com:8443"}, "https://live.example.com:8443",
     "wss://live.example.com:8081/ws"),
    ({"public_url": "http://shop.example.com/live/"}, "http://shop.example.com/live", "ws://shop.example.com:8081/ws"),
    ({"public_url": "http://[2001:db8::1]"}, "http://[2001:db8::1]", "ws://[2001:db8::1]:8081/ws"),
    ({"public_url": "https://[2001:db8::1]:8443"}, "https://[2001:db8::1]:8443", "wss://[2001:db8::1]:8081/ws"),
    # A proxy that routes the websocket by path says so.
    ({"public_url": "https://shop.example.com", "public_ws_url": "wss://shop.example.com/ws"},
     "https://shop.example.com", "wss://shop.example.com/ws"),
    ({"public_ws_url": "wss://events.example.com/live/ws"}, "http://127.0.0.1:8080",
     "wss://events.example.com/live/ws"),
])
def test_public_urls(settings: dict[str, str], base: str, ws: str) -> None:
    urls = public_urls(Config(**settings), 8080, 8081)
    assert (urls.base, urls.ws) == (base, ws)
    assert urls.link("/watch/demo") == base + "/watch/demo"


@pytest.mark.parametrize(("settings", "flag"), [
    ({"public_url": "shop.example.com"}, "--public-url"),
    ({"public_url": "ftp://shop.example.com"}, "--public-url"),
    ({"public_url": "https://shop.example.com/?a=1"}, "--public-url"),
    ({"public_url": "http://[::1"}, "--public-url"),
    ({"public_ws_url": "https://shop.example.com/ws"}, "--public-ws-url"),
])
def test_unusable_public_urls_are_refused(settings: dict[str, str], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        public_urls(Config(**settings), 8080, 8081)


async def room_and_page(app: App, host: str = "127.0.0.1") -> tuple[dict[str, Any], dict[str, Any]]:
    """The room resource of ``demo`` and the watch page's embedded settings, over HTTP."""
    base = f"http://{host}:{app.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/rooms/demo") as response:
            room = await response.json()
        async with http.get(f"{base}/watch/demo") as response:
            found = SETTINGS.search(await response.text())
    assert found is not None
    return room, orjson.loads(found.group(1))


async def test_a_public_url_without_port_gives_working_links(config: Config) -> None:
    app = App(config.replace(public_url="https://shop.example.com"))
    await app.start()
    try:
        room, page = await room_and_page(app)
    finally:
        await app.stop()
    ws = f"wss://shop.example.com:{app.ws_port}/ws"
    assert room["links"] == {"watch": "https://shop.example.com/watch/demo",
                             "studio": "https://shop.example.com/studio/demo",
                             "whip": "https://shop.example.com/whip/demo",
                             "whep": "https://shop.example.com/whep/demo",
                             "hls": "https://shop.example.com/hls/demo/index.m3u8", "ws": ws}
    assert page["ws"] == ws


async def test_a_public_websocket_url_is_given_as_is(config: Config) -> None:
    app = App(config.replace(public_url="https://shop.example.com", public_ws_url="wss://shop.example.com/ws"))
    await app.start()
    try:
        room, page = await room_and_page(app)
    finally:
        await app.stop()
    assert room["links"]["ws"] == page["ws"] == "wss://shop.example.com/ws"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
async def test_an_ipv6_bind_address_keeps_its_brackets(config: Config) -> None:
    app = App(config.replace(host="::1"))
    await app.start()
    try:
        room, page = await room_and_page(app, "[::1]")
    finally:
        await app.stop()
    assert room["links"]["watch"] == f"http://[::1]:{app.http_port}/watch/demo"
    assert room["links"]["ws"] == page["ws"] == f"ws://[::1]:{app.ws_port}/ws"
