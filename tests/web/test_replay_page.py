"""The replay page in Chromium against a real recording: an aiortc publisher streams H264 + Opus
over WHIP while the host pins, moves and unpins a tag and runs a flash sale over REST; the replay
plays the recording's playlist, shows the tag exactly while it was pinned (playing through it,
seeking back and forth), seeks from "featured", and sells at the catalog price. The lobby lists the
broadcast and the room's watch page links to its replay once the room is offline.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.app import App
from engine.config import Config
from tests.browser import CHROMIUM
from tests.conftest import free_port, running
from tests.media.media_peers import Publisher, encode_opus, encode_video
from tests.web.test_pages import Pages, browser  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed"),
    pytest.mark.timeout(240),
]

MUG = {"title": "Stoneware mug", "price": 1500, "currency": "EUR", "stock": 10}
ADMIN = {"Authorization": "Bearer test-admin"}
# A browser without HLS of its own (Firefox, Chromium before it had one): the page must use hls.js.
NO_NATIVE_HLS = """
(() => {
  const real = HTMLMediaElement.prototype.canPlayType;
  HTMLMediaElement.prototype.canPlayType = function (type) {
    return /mpegurl/i.test(type) ? '' : real.call(this, type);
  };
})();
"""


class ReplayPages(Pages):
    """Pages with no WebRTC to keep on loopback: the replay plays over HTTP."""

    init_scripts = ()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    config = Config(host="127.0.0.1", http_port=free_port(), ws_port=free_port(), data_dir=str(tmp_path / "data"),
                    secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20, demo_catalog=False,
                    announce="127.0.0.1", recording_rejoin=0.5)
    async with running(config) as engine:
        yield engine


@pytest.fixture
def pages(app: App, browser: Any) -> ReplayPages:  # noqa: F811 (the imported fixture)
    opened = ReplayPages(app, browser)
    yield opened
    assert not opened.errors, opened.errors


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    async with http.request(method, url, headers=ADMIN, **kwargs) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


async def record_a_show(app: App) -> tuple[dict[str, Any], dict[str, float]]:
    """Broadcast about 8 s: the mug's tag pinned at ~2 s, moved at ~3.5 s, unpinned at ~5 s, a flash
    sale on it meanwhile. Returns the finished recording and the moments its timeline holds."""
    base = f"http://127.0.0.1:{app.http_port}/api/rooms/demo"
    publisher = Publisher(encode_video("h264"), encode_opus())
    async with aiohttp.ClientSession() as http:
        await call(http, "PUT", f"{base}/products/mug", json=MUG)
        response = await publisher.publish(http, f"http://127.0.0.1:{app.http_port}", "demo",
                                           app.rooms.get("demo").stream_key, {"video": "H264", "audio": "opus"})
        assert response.status == 201
        async with asyncio.timeout(10):
            while app.recordings.recording("demo") is None:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
        await call(http, "POST", f"{base}/tags", json={"id": "t1", "product_id": "mug", "x": 0.3, "y": 0.4})
        sale = (await call(http, "POST", f"{base}/sales",
                           json={"product_id": "mug", "price": 900, "quantity": 5, "duration": 60}))["sale"]
        await asyncio.sleep(1.5)
        await call(http, "POST", f"{base}/tags", json={"id": "t1", "product_id": "mug", "x": 0.7, "y": 0.4})
        await asyncio.sleep(1.5)
        await call(http, "DELETE", f"{base}/tags/t1")
        await call(http, "POST", f"{base}/sales/{sale['id']}/end")
        await asyncio.sleep(3.0)
        await http.delete(f"http://127.0.0.1:{app.http_port}{publisher.location}")
        await publisher.close()
        async with asyncio.timeout(10):  # the broadcast ends, then its writer writes the recording whole
            while True:
                [recording] = (await call(http, "GET", f"{base}/recordings"))["recordings"]
                if recording["state"] != "recording":
                    break
                await asyncio.sleep(0.05)
        events = (await call(http, "GET", f"{base}/recordings/{recording['id']}/timeline"))["events"]
    pins = [e["media_ts"] for e in events if e["type"] == "tag.pinned"]
    [unpinned] = [e["media_ts"] for e in events if e["type"] == "tag.unpinned"]
    assert recording["state"] == "complete" and recording["featured"] == ["mug"]
    assert 1.0 < pins[0] < pins[1] < unpinned < recording["duration"] - 1.0, (pins, unpinned, recording)
    return recording, {"pinned": pins[0], "moved": pins[1], "unpinned": unpinned}


async def frames_rising(page: Any) -> int:
    """Frames the replay's video decoded, waiting until they rise."""
    count = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
    first = await page.evaluate(count)
    await page.wait_for_function(f"{count} > {first} + 10")
    return await page.evaluate(count)


async def seek(page: Any, seconds: float) -> None:
    await page.evaluate("""(t) => new Promise((resolve) => {
      const video = document.getElementById('video');
      video.addEventListener('seeked', () => resolve(), {once: true});
      video.currentTime = t;
    })""", seconds)


def tag_left(style: str) -> float:
    return float(re.search(r"left:\s*([\d.]+)%", style).group(1))


async def test_replay_shows_tags_on_their_frames_seeks_and_sells(app: App, pages: ReplayPages) -> None:
    recording, moments = await record_a_show(app)
    assert recording["links"]["replay"] == f"http://127.0.0.1:{app.http_port}/replay/demo/{recording['id']}"
    pinned, moved, unpinned = moments["pinned"], moments["moved"], moments["unpinned"]

    page = await pages.open(f"/replay/demo/{recording['id']}")
    video = page.locator("#video")
    tag = page.locator("#tags .tag[data-tag=t1]")
    card_on_video = tag.locator(".tag-card")  # the tag itself is a zero-size anchor
    await frames_rising(page)
    await page.locator("#stage-msg").wait_for(state="hidden")
    current = "document.getElementById('video').currentTime"

    # playing through: the tag comes when the playhead passes its pin, goes at its unpin
    await page.evaluate("document.getElementById('video').pause()")
    await seek(page, pinned - 0.6)
    assert await tag.count() == 0
    await page.evaluate("document.getElementById('video').play()")
    await card_on_video.wait_for()
    assert await page.evaluate(current) >= pinned - 0.05
    await tag.wait_for(state="detached")
    assert await page.evaluate(current) >= unpinned - 0.05

    # seeking, paused: back before the pin hides it, into each pinned stretch shows it where it was
    await page.evaluate("document.getElementById('video').pause()")
    await seek(page, (moved + unpinned) / 2)
    await card_on_video.wait_for()
    assert abs(tag_left(await tag.get_attribute("style")) - 70) < 1
    await seek(page, pinned - 0.3)
    await tag.wait_for(state="detached")
    await seek(page, (pinned + moved) / 2)
    await card_on_video.wait_for()
    assert abs(tag_left(await tag.get_attribute("style")) - 30) < 1
    await tag.locator(".tag-price", has_text="15.00").wait_for()  # the catalog price, not the sale's
    await seek(page, unpinned + 0.3)
    await tag.wait_for(state="detached")

    # featured: the mug with its moment, the ended flash price; tapping the moment seeks there
    card = page.locator("#featured .featured[data-product=mug]")
    await card.locator(".product-price", has_text="15.00").wait_for()
    await card.locator(".flash-ended", has_text="9.00").wait_for()
    await card.locator("button.moment").click()
    await page.wait_for_function(f"Math.abs({current} - {pinned}) < 0.3 && !document.getElementById('video').seeking")
    await card_on_video.wait_for()
    native = await page.evaluate("!!document.createElement('video').canPlayType('application/vnd.apple.mpegurl')")
    assert await video.get_attribute("data-player") == ("native" if native else "hls.js")

    # buy it from the replay: at the catalog price, an order the shop's API knows
    await card.locator("button.add").click()
    await page.locator("#cart-count", has_text="1").wait_for()
    await page.click("#cart-button")
    line = page.locator("#cart-lines .cart-line")
    assert "15.00" in await line.locator(".unit-price").inner_text()
    await page.click("#checkout")
    await page.locator("#order-dialog #order-total", has_text="15.00").wait_for()
    order_id = await page.locator("#order-id").inner_text()
    async with aiohttp.ClientSession() as http:
        orders = (await call(http, "GET", f"http://127.0.0.1:{app.http_port}/api/rooms/demo/orders"))["orders"]
    [order] = orders
    assert order["id"] == order_id and order["total"] == 1500
    assert [(line["product"], line["sale"], line["unit_amount"]) for line in order["lines"]] == [("mug", None, 1500)]

    # a phone without HLS of its own: hls.js plays it, the tags follow the playhead there too
    without_hls = ReplayPages(app, pages.browser)
    without_hls.init_scripts = (NO_NATIVE_HLS,)
    phone = await without_hls.open(f"/replay/demo/{recording['id']}", viewport={"width": 390, "height": 844},
                                   is_mobile=True)
    assert await phone.locator("#video").get_attribute("data-player") == "hls.js"
    await frames_rising(phone)
    await phone.evaluate("document.getElementById('video').pause()")
    await seek(phone, (pinned + moved) / 2)
    await phone.locator("#tags .tag[data-tag=t1] .tag-card").wait_for()
    await seek(phone, pinned - 0.3)
    await phone.locator("#tags .tag[data-tag=t1]").wait_for(state="detached")
    assert await phone.locator("#featured .featured[data-product=mug]").is_visible()
    box = await phone.locator("#stage").bounding_box()
    assert box["width"] <= 390
    assert not without_hls.errors, without_hls.errors


async def test_lobby_and_offline_watch_page_link_to_the_replay(app: App, pages: ReplayPages) -> None:
    recording, _ = await record_a_show(app)
    replay = f"/replay/demo/{recording['id']}"

    lobby = await pages.open("/")
    past = lobby.locator(f"#past .past-card[data-recording='{recording['id']}']")
    await past.wait_for()
    assert await past.locator("a", has_text="replay").get_attribute("href") == replay
    assert "1 product featured" in await past.inner_text()

    watch = await pages.open("/watch/demo")
    await watch.locator("#live", has_text="Offline").wait_for()
    link = watch.locator("#stage-msg a.replay-link")
    await link.wait_for()
    assert await link.get_attribute("href") == replay
    await link.click()
    await watch.wait_for_url(f"**{replay}")
    await frames_rising(watch)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{pages.base}/replay/demo/20000101T000000Z-abcdef") as response:
            assert response.status == 404 and "livecart-config" in await response.text()
        async with http.get(f"{pages.base}/replay/nowhere/{recording['id']}") as response:
            assert response.status == 404
        async with http.get(f"{pages.base}/web/vendor/hls.min.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
            assert len(await response.read()) > 100_000
    missing = await pages.open("/replay/demo/20000101T000000Z-abcdef")
    assert "no recording" in await missing.locator("#missing").inner_text()
