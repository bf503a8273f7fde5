"""The watch page in Chromium playing the live LL-HLS with the bundled hls.js, from an aiortc publisher
over WHIP: when WHEP answers 503 (the room has its ``--max-viewers-per-room``), when WebRTC never
connects (a browser that gathers no ICE candidate, as behind a firewall that drops UDP), and in a
room whose ``hls_only`` setting sends every viewer to HLS. Tags and the cart work as over WebRTC,
and the page shows how far behind live it plays (under 4 s). Chromium has an HLS player of its own
(``canPlayType`` answers 'maybe'), but the page prefers hls.js wherever Media Source Extensions exist
(only hls.js follows the LL-HLS parts and blocking reloads; Chromium's own player refuses the live
stream: docs/OPERATIONS.md, "Live HLS").
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from engine.app import App
from engine.config import Config
from tests.browser import CHROMIUM
from tests.conftest import running, token
from tests.media.media_peers import Publisher, Viewer, encode_opus, encode_video
from tests.web.test_pages import LOOPBACK_ONLY, Pages, browser  # noqa: F401 (fixture)
from tests.web.test_replay_page import frames_rising

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed"),
    pytest.mark.timeout(180),
]

ADMIN = {"Authorization": "Bearer test-admin"}
MUG = {"title": "Stoneware mug", "price": 1500, "currency": "EUR", "stock": 10}
# A browser that may only use TURN relays, with none configured: it offers no ICE candidate at all,
# so its WebRTC session never connects (as behind a firewall that drops UDP).
NO_ICE_CANDIDATES = """
(() => {
  const Real = RTCPeerConnection;
  window.RTCPeerConnection = function (config) { return new Real({...config, iceTransportPolicy: 'relay'}); };
  window.RTCPeerConnection.prototype = Real.prototype;
})();
"""
#: What the watch page shows of the HLS picture's latency: the playhead's EXT-X-PROGRAM-DATE-TIME
#: (hls.js ``playingDate``) against the wall clock the publisher's frames were stamped with on arrival.
LATENCY = "Number(document.getElementById('mode').dataset.latency)"


def engine_config(tmp_path: Path, **changes: Any) -> Config:
    return Config(host="127.0.0.1", http_port=0, ws_port=0, data_dir=str(tmp_path / "data"),
                  secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20, demo_catalog=False,
                  announce="127.0.0.1", record=False, **changes)


@pytest.fixture
async def full_room(tmp_path: Path) -> AsyncIterator[App]:
    """Every WHEP viewer is refused (no media viewer fits the room): the 503 path of a full room."""
    async with running(engine_config(tmp_path, max_viewers_per_room=0)) as app:
        yield app


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with running(engine_config(tmp_path)) as engine:
        yield engine


async def go_live(app: App, http: aiohttp.ClientSession) -> Publisher:
    """The host puts a mug on sale and pins its tag; the publisher streams H264 + Opus over WHIP."""
    api = f"http://127.0.0.1:{app.http_port}/api/rooms/demo"
    async with http.put(f"{api}/products/mug", json=MUG, headers=ADMIN) as response:
        assert response.status in (200, 201), await response.text()
    async with http.post(f"{api}/tags", json={"id": "t1", "product_id": "mug", "x": 0.3, "y": 0.4},
                         headers=ADMIN) as response:
        assert response.status in (200, 201), await response.text()
    publisher = Publisher(encode_video("h264", frames=120, gop=30), encode_opus())
    response = await publisher.publish(http, f"http://127.0.0.1:{app.http_port}", "demo",
                                       app.rooms.get("demo").stream_key, {"video": "H264", "audio": "opus"})
    assert response.status == 201
    return publisher


async def plays_hls(page: Any, reason: str) -> None:
    """The page says it plays HLS (and why), hls.js plays the live picture, the tag sells the mug."""
    await page.locator("#mode", has_text="HLS").wait_for()
    assert reason in await page.get_attribute("#mode", "title")
    await frames_rising(page)
    assert await page.get_attribute("#video", "data-player") == "hls.js"
    assert await page.evaluate("document.getElementById('video').videoWidth") == 320
    await page.locator("#stage-msg").wait_for(state="hidden")
    await page.locator("#live", has_text="Live").wait_for()
    tag = page.locator("#tags .tag[data-tag=t1]")
    await tag.locator(".tag-price", has_text="15.00").wait_for()
    await tag.locator("button.tag-buy").click()
    await page.locator("#cart-count", has_text="1").wait_for()


async def latency(page: Any, samples: int = 9) -> float:
    """The median of what the page shows, once a second, of how far behind live it plays."""
    await page.wait_for_function(f"{LATENCY} > 0")
    seen = []
    for _ in range(samples):
        seen.append(await page.evaluate(LATENCY))
        await asyncio.sleep(1.0)
    return statistics.median(seen)


async def test_watch_page_plays_hls_when_whep_answers_503(full_room: App, browser: Any) -> None:  # noqa: F811
    app = full_room
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession() as http:
        publisher = await go_live(app, http)
        pages = Pages(app, browser)
        page = await pages.open("/watch/demo")
        await plays_hls(page, "WebRTC refused: room 'demo' has its maximum of viewers")
        behind = await latency(page)
        assert 0 < behind < 4.0, behind  # the glass-to-glass requirement for HLS
        assert "s behind live" in await page.get_attribute("#mode", "title")
        print(f"HLS latency in Chromium (hls.js), median of 9: {behind:.2f} s")
        assert app.media.room("demo").viewers == {}
        assert not pages.errors, pages.errors
        await http.delete(base + publisher.location)
        await publisher.close()


async def test_watch_page_plays_hls_when_webrtc_never_connects(app: App, browser: Any) -> None:  # noqa: F811
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession() as http:
        publisher = await go_live(app, http)
        pages = Pages(app, browser)
        pages.init_scripts = (LOOPBACK_ONLY, NO_ICE_CANDIDATES)
        page = await pages.open("/watch/demo")
        await page.locator("#mode", has_text="WebRTC").wait_for()  # WHEP answered: it tries WebRTC first
        await page.locator("#mode", has_text="HLS").wait_for(timeout=30_000)
        # Either the page's own deadline or Chromium's ICE failure, whichever comes first: both say
        # that WebRTC never connected.
        reason = await page.get_attribute("#mode", "data-reason")
        assert reason in ("WebRTC did not connect", "WebRTC failed to connect"), reason
        await plays_hls(page, reason)
        assert not pages.errors, pages.errors
        await http.delete(base + publisher.location)
        await publisher.close()


async def patch_room(http: aiohttp.ClientSession, app: App, body: Any, bearer: str) -> tuple[int, dict]:
    async with http.patch(f"http://127.0.0.1:{app.http_port}/api/rooms/demo", json=body,
                          headers={"Authorization": f"Bearer {bearer}"}) as response:
        return response.status, await response.json()


async def test_hls_only_room_sends_viewers_to_hls(app: App, browser: Any) -> None:  # noqa: F811
    base = f"http://127.0.0.1:{app.http_port}"
    host = token(app, "demo", "host", "host")
    async with aiohttp.ClientSession() as http:
        status, room = await patch_room(http, app, {}, host)
        assert status == 200 and room["hls_only"] is False  # off by default
        for bad in ("yes", 1, 0, [True], {"on": 1}):
            status, body = await patch_room(http, app, {"hls_only": bad}, host)
            assert status == 400 and body["error"]["code"] == "bad_request", bad
        status, body = await patch_room(http, app, {"hls_only": True}, token(app, "demo", "viewer", "v1"))
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, room = await patch_room(http, app, {"hls_only": True}, host)
        assert status == 200 and room["hls_only"] is True
        async with http.get(f"{base}/api/rooms/demo") as response:
            assert (await response.json())["hls_only"] is True

        publisher = await go_live(app, http)  # publishers are unaffected
        viewer = Viewer()
        response = await viewer.whep(http, base, "demo")
        assert response.status == 503 and response.content_type == "application/json"
        error = (await response.json())["error"]
        assert error["code"] == "hls_only" and "HLS-only" in error["message"]
        assert "/hls/demo/index.m3u8" in error["message"]
        # the websocket's offer action likewise
        async with websockets.connect(f"ws://127.0.0.1:{app.ws_port}/ws?token={token(app, 'demo', 'viewer', 'v2')}") \
                as ws:
            await ws.send(orjson.dumps({"type": "offer", "id": "o1", "sdp": await viewer.offer()}).decode())
            async with asyncio.timeout(10):
                refused = orjson.loads(await ws.recv())
                while refused.get("re") != "o1":
                    refused = orjson.loads(await ws.recv())
        assert refused["type"] == "error" and refused["code"] == "hls_only", refused
        await viewer.close()

        pages = Pages(app, browser)
        page = await pages.open("/watch/demo")
        await plays_hls(page, "the room plays over HLS only")
        over_socket = await pages.open("/watch/demo?via=ws")  # the websocket's offer is refused alike
        await over_socket.locator("#mode", has_text="HLS").wait_for()
        await frames_rising(over_socket)
        assert app.media.room("demo").viewers == {}

        # the setting off again: the next viewer plays WebRTC
        status, room = await patch_room(http, app, {"hls_only": False}, "test-admin")
        assert status == 200 and room["hls_only"] is False
        webrtc = await pages.open("/watch/demo")
        await webrtc.locator("#mode", has_text="WebRTC").wait_for()
        await frames_rising(webrtc)
        assert await webrtc.evaluate("!!document.getElementById('video').srcObject")
        assert len(app.media.room("demo").viewers) == 1
        assert not pages.errors, pages.errors
        await http.delete(base + publisher.location)
        await publisher.close()


async def test_a_private_hls_only_room_plays_with_the_viewers_token(app: App, browser: Any) -> None:  # noqa: F811
    """The page hands its viewer token to the HLS playlist of a private room (the playlist names its
    files with it), so a shopper the shop let in plays and buys; without it the stream is refused."""
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession() as http:
        status, room = await patch_room(http, app, {"private": True, "hls_only": True}, "test-admin")
        assert status == 200 and room["private"] and room["hls_only"]
        publisher = await go_live(app, http)
        async with http.get(f"{base}/hls/demo/index.m3u8") as response:
            assert response.status == 401
        pages = Pages(app, browser)
        page = await pages.open(f"/watch/demo?token={token(app, 'demo', 'viewer', 'vip')}")
        await plays_hls(page, "the room plays over HLS only")
        assert not pages.errors, pages.errors
        await http.delete(base + publisher.location)
        await publisher.close()
