"""A real browser: Chromium publishes its fake camera over WHIP, a second page plays over WHEP.

The pages are served by the test's own aiohttp app (beside the relay's routes),
every candidate the pages send is filtered to 127.0.0.1, and the relay
announces 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.media.service import MediaService
from signaling.whip import add_media_routes
from tests.browser import CHROMIUM, FLAGS

COMMON = """
async function negotiate(pc, url, key) {
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
  });
  const sdp = pc.localDescription.sdp.split('\\r\\n')
    .filter(l => !l.startsWith('a=candidate') || l.includes(' 127.0.0.1 ')).join('\\r\\n');
  const headers = {'Content-Type': 'application/sdp'};
  if (key) headers['Authorization'] = 'Bearer ' + key;
  const response = await fetch(url, {method: 'POST', headers, body: sdp});
  if (response.status !== 201) throw new Error('status ' + response.status + ' ' + await response.text());
  await pc.setRemoteDescription({type: 'answer', sdp: await response.text()});
}
"""

PUBLISH = (
    "<script>"
    + COMMON
    + """
window.start = async (key) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
  const pc = new RTCPeerConnection({iceServers: []});
  for (const track of stream.getTracks()) pc.addTransceiver(track, {direction: 'sendonly'});
  window.pc = pc;
  await negotiate(pc, '/whip/shop', key);
};
</script>"""
)

PLAY = (
    "<video id=v autoplay muted playsinline></video><script>"
    + COMMON
    + """
window.start = async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  pc.ontrack = e => { document.getElementById('v').srcObject = e.streams[0] || new MediaStream([e.track]); };
  window.pc = pc;
  await negotiate(pc, '/whep/shop');
};
window.videoStats = async () => {
  const stats = await window.pc.getStats();
  for (const s of stats.values())
    if (s.type === 'inbound-rtp' && s.kind === 'video')
      return {framesDecoded: s.framesDecoded || 0, frameWidth: s.frameWidth || 0,
              videoWidth: document.getElementById('v').videoWidth};
  return {framesDecoded: 0, frameWidth: 0, videoWidth: 0};
};
</script>"""
)

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed")


@pytest.fixture
async def site(relay) -> AsyncIterator[str]:
    app = web.Application()
    media: MediaService = relay.media
    add_media_routes(app, media)
    pages = {"/publish": PUBLISH, "/play": PLAY}
    for path, html in pages.items():

        async def page(request: web.Request, html: str = html) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        app.router.add_get(path, page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_chromium_publishes_over_whip_and_plays_over_whep(relay, site):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            publisher = await browser.new_page()
            await publisher.goto(f"{site}/publish")
            await publisher.evaluate("key => window.start(key)", relay.key("shop"))
            viewer = await browser.new_page()
            await viewer.goto(f"{site}/play")
            await viewer.evaluate("window.start()")
            # Polled from here: wait_for_function with an async predicate sometimes hands back the
            # predicate's truthiness instead of the stats it resolved to.
            for _ in range(150):
                first = await viewer.evaluate("window.videoStats()")
                if first["framesDecoded"] > 0:
                    break
                await viewer.wait_for_timeout(100)
            assert first["framesDecoded"] > 0, first
            await viewer.wait_for_timeout(1000)
            later = await viewer.evaluate("window.videoStats()")
            assert later["framesDecoded"] > first["framesDecoded"]
            assert later["frameWidth"] == 640
            assert later["videoWidth"] > 0
        finally:
            await browser.close()
