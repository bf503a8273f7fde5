"""The studio and watch pages in Chromium when the room's media changes under them.

A viewer that opened the page before the host went live, a publisher with another codec,
an engine restart. Every packet stays on loopback (see tests/web/test_pages.py).
"""

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
from tests.conftest import free_port
from tests.media.media_peers import Publisher, encode_opus, encode_video
from tests.web.test_pages import LOOPBACK_ONLY, WAIT_MS, Pages, browser, host_token  # noqa: F401 (fixture)

# The test's own look at the pages' peer connections (the pages keep them private).
PEERS = """
(() => {
  const Real = RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) { const pc = new Real(...args); window.__pcs.push(pc); return pc; };
  window.RTCPeerConnection.prototype = Real.prototype;
  window.videoStats = async () => {
    const pc = window.__pcs[window.__pcs.length - 1];
    let framesDecoded = 0;
    if (pc) for (const s of (await pc.getStats()).values())
      if (s.type === 'inbound-rtp' && s.kind === 'video') framesDecoded = s.framesDecoded || 0;
    return {peers: window.__pcs.length, framesDecoded, videoWidth: document.getElementById('video').videoWidth};
  };
})();
"""

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed"),
    pytest.mark.timeout(180),
]


class MediaPages(Pages):
    """Pages whose peer connections the test can read (``window.videoStats()``)."""

    init_scripts = (LOOPBACK_ONLY, PEERS)


@pytest.fixture
def engine_config(tmp_path: Path) -> Config:
    """Fixed ports, so an engine started again on the same data directory is found by the open pages."""
    return Config(host="127.0.0.1", http_port=free_port(), ws_port=free_port(), data_dir=str(tmp_path / "data"),
                  secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20, demo_catalog=False,
                  announce="127.0.0.1")


@pytest.fixture
async def engine(engine_config: Config) -> AsyncIterator[dict[str, App]]:
    """``running["app"]`` is the engine of the moment (a test may stop it and start another)."""
    running = {"app": App(engine_config)}
    await running["app"].start()
    try:
        yield running
    finally:
        await running["app"].stop()


@pytest.fixture
def pages(engine: dict[str, App], browser: Any) -> MediaPages:  # noqa: F811 (the imported fixture)
    opened = MediaPages(engine["app"], browser)
    yield opened
    assert not opened.errors, opened.errors


async def decoding(page: Any, peers: int = 1) -> dict[str, int]:
    """Wait until the page's newest peer connection (at least the ``peers``-th) decodes rising frames."""
    first: dict[str, int] | None = None
    async with asyncio.timeout(WAIT_MS / 1000):
        while True:
            stats = await page.evaluate("window.videoStats()")
            if stats["peers"] >= peers and stats["framesDecoded"] > 0 and stats["videoWidth"] > 0:
                if first is None:
                    first = stats
                elif stats["peers"] == first["peers"] and stats["framesDecoded"] > first["framesDecoded"]:
                    return stats
            await asyncio.sleep(0.2)


async def go_live(studio: Any, app: App) -> None:
    await studio.fill("#stream-key", app.rooms.get("demo").stream_key)
    await studio.click("#go-live")
    await studio.locator("#publish-status", has_text="You are live").wait_for()


async def test_viewer_waiting_before_the_studio_goes_live_sees_video(engine, pages: MediaPages) -> None:
    app = engine["app"]
    viewer = await pages.open("/watch/demo")  # opened first: negotiates with an empty room
    await viewer.locator("#stage-msg", has_text="offline").wait_for()
    await viewer.wait_for_function("window.__pcs.length === 1 && window.__pcs[0].connectionState === 'connected'")

    studio = await pages.open(f"/studio/demo?token={host_token(app)}")  # Chromium publishes VP8 unless told
    await go_live(studio, app)
    stats = await decoding(viewer)
    assert stats["peers"] == 1  # the codec the waiting viewer negotiated was kept: no new offer needed
    await viewer.locator("#live", has_text="Live").wait_for()
    await viewer.locator("#stage-msg").wait_for(state="hidden")


async def test_watch_page_offers_again_for_a_publisher_with_another_codec(engine, pages: MediaPages) -> None:
    app = engine["app"]
    viewer = await pages.open("/watch/demo")
    await viewer.wait_for_function("window.__pcs.length === 1 && window.__pcs[0].connectionState === 'connected'")
    publisher = Publisher(encode_video("vp8", frames=60), encode_opus(1.0))  # VP8 only: no H264 to prefer
    async with aiohttp.ClientSession() as http:
        response = await publisher.publish(http, f"http://127.0.0.1:{app.http_port}", "demo",
                                           app.rooms.get("demo").stream_key, {"video": "VP8", "audio": "opus"})
        assert response.status == 201
        try:
            stats = await decoding(viewer, peers=2)  # a new offer, now for VP8
            assert stats["videoWidth"] == 320
        finally:
            await publisher.close()


async def test_pages_recover_from_an_engine_restart(engine, engine_config: Config, pages: MediaPages) -> None:
    app = engine["app"]
    studio = await pages.open(f"/studio/demo?token={host_token(app)}")
    await go_live(studio, app)
    viewer = await pages.open("/watch/demo")
    before = await decoding(viewer)

    await app.stop()  # the engine goes away (its sessions with it) and comes back on the same ports and data
    await asyncio.sleep(1)
    engine["app"] = app = App(engine_config)
    await app.start()

    # nobody clicks anything: the studio publishes again by itself and the viewer plays it
    await studio.locator("#publish-status", has_text="You are live").wait_for()
    after = await decoding(viewer, peers=before["peers"] + 1)
    assert after["videoWidth"] > 0
    await viewer.locator("#live", has_text="Live").wait_for()
    assert app.media.room("demo").publisher_id is not None

    await studio.click("#go-live")  # end the stream
    await viewer.locator("#live", has_text="Offline").wait_for()


async def test_pages_show_offline_after_a_restart_without_a_publisher(engine, engine_config: Config,
                                                                      pages: MediaPages) -> None:
    app = engine["app"]
    publisher = Publisher(encode_video("h264", frames=60), encode_opus(1.0))
    async with aiohttp.ClientSession() as http:
        response = await publisher.publish(http, f"http://127.0.0.1:{app.http_port}", "demo",
                                           app.rooms.get("demo").stream_key, {"video": "H264", "audio": "opus"})
        assert response.status == 201
    viewer = await pages.open("/watch/demo")
    studio = await pages.open(f"/studio/demo?token={host_token(app)}")
    for page in (viewer, studio):
        await page.locator("#live", has_text="Live").wait_for()

    await app.stop()
    await publisher.close()  # the publisher does not come back
    engine["app"] = app = App(engine_config)
    await app.start()
    for page in (viewer, studio):
        await page.locator("#conn.open").wait_for(state="attached")
        await page.locator("#live", has_text="Offline").wait_for()


async def test_a_second_studio_takes_over_from_one_whose_media_stopped(engine, pages: MediaPages) -> None:
    app = engine["app"]
    first = await pages.open(f"/studio/demo?token={host_token(app)}")
    await go_live(first, app)
    viewer = await pages.open("/watch/demo")
    await decoding(viewer)

    second = await pages.open(f"/studio/demo?token={host_token(app)}")
    await second.fill("#stream-key", app.rooms.get("demo").stream_key)
    await second.click("#go-live")  # the first studio still sends media: refused
    await second.locator("#publish-status.error", has_text="already broadcasting").wait_for()

    # the first studio's media stops (a crashed or frozen browser sends no DELETE)
    await first.evaluate("document.getElementById('preview').srcObject.getTracks().forEach((t) => t.stop())")
    idle = app.config.publisher_idle
    await viewer.locator("#live", has_text="Offline").wait_for(timeout=(idle + 3) * 1000)

    await second.click("#go-live")
    await second.locator("#publish-status", has_text="You are live").wait_for()
    await viewer.locator("#live", has_text="Live").wait_for()
    await decoding(viewer)
    await first.locator("#publish-status.error", has_text="already broadcasting").wait_for()
