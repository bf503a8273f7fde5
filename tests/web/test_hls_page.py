"""The watch page in Chromium playing live HLS with the bundled hls.js when WHEP answers 503."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.app import App
from engine.config import Config
from tests.browser import CHROMIUM
from tests.conftest import running
from tests.media.media_peers import Publisher, encode_opus, encode_video
from tests.web.test_pages import WAIT_MS, Pages, browser  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed"),
    pytest.mark.timeout(180),
]


@pytest.fixture
async def full_room(tmp_path: Path) -> AsyncIterator[App]:
    """Every WHEP viewer is refused (no media viewer fits a room): the 503 path of a full room."""
    config = Config(host="127.0.0.1", http_port=0, ws_port=0, data_dir=str(tmp_path / "data"),
                    secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20, demo_catalog=False,
                    announce="127.0.0.1", record=False, max_viewers_per_room=0)
    async with running(config) as app:
        yield app


@pytest.mark.xfail(strict=True, reason="hls.js loads the playlist and parts but reports 'appended without buffered "
                   "range growth' for the parts after the first: playback of the one-fragment-per-frame parts "
                   "in Chromium's MSE is not working yet")
async def test_watch_page_plays_hls_when_whep_answers_503(full_room: App, browser: Any) -> None:  # noqa: F811
    app = full_room
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession() as http:
        publisher = Publisher(encode_video("h264", frames=120, gop=30), encode_opus())
        response = await publisher.publish(http, base, "demo", app.rooms.get("demo").stream_key,
                                           {"video": "H264", "audio": "opus"})
        assert response.status == 201
        pages = Pages(app, browser)
        page = await pages.open("/watch/demo")
        await page.locator("#mode", has_text="HLS").wait_for()
        assert (await page.get_attribute("#mode", "title")).startswith("playing over HTTP (HLS): WebRTC refused")
        await page.wait_for_function("typeof Hls === 'function'")  # the bundled hls.js, from /web/vendor/

        first: int | None = None
        async with asyncio.timeout(WAIT_MS / 1000):
            while True:
                frames = await page.evaluate("document.getElementById('video').getVideoPlaybackQuality()"
                                             ".totalVideoFrames")
                if frames and first is None:
                    first = frames
                elif first is not None and frames > first + 30:
                    break
                await asyncio.sleep(0.2)
        assert await page.evaluate("document.getElementById('video').videoWidth") == 320
        await page.locator("#stage-msg").wait_for(state="hidden")
        # the page still follows the room over its websocket: overlays and commerce as in WebRTC mode
        await page.locator("#live", has_text="Live").wait_for()
        assert app.media.room("demo").viewers == {}
        assert not pages.errors, pages.errors
        await http.delete(base + publisher.location)
        await publisher.close()
