"""Session resources after the peer left, and what cross-origin browser clients may send and read.

A client that closes its peer connection before its ``DELETE`` (our studio
and watch pages, medooze's ``stop()``) gets 200, not 404; ids that never
existed still get 404; ended ids are forgotten by age and by count. A page on
another origin may send ``ETag`` on PATCH and read ``Accept-Patch``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from media_peers import Viewer

from engine.media.config import MediaConfig
from engine.media.ended import RecentlyEnded
from tests.browser import CHROMIUM, FLAGS

SDPFRAG = "application/trickle-ice-sdpfrag"


async def until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def connected_viewer(relay) -> tuple[Viewer, str]:
    viewer = Viewer()
    response = await viewer.whep(relay.http, relay.base, "shop")
    assert response.status == 201
    await until(lambda: viewer.pc.connectionState == "connected")
    return viewer, relay.base + response.headers["Location"]


@pytest.mark.parametrize(
    "media_config", [MediaConfig(announced_addresses=("127.0.0.1",), ended_session_ttl=1.5, ended_sessions_max=2)]
)
async def test_delete_after_the_peer_closed_answers_200(relay):
    viewers = [await connected_viewer(relay) for _ in range(3)]
    for viewer, _ in viewers:
        await viewer.close()  # DTLS close first, as browsers do: the relay drops the session
    await until(lambda: relay.media.peer_count == 0)
    # the count bound: of three ended ids the oldest is already forgotten
    assert (await relay.http.delete(viewers[0][1])).status == 404
    for _, resource in viewers[1:]:
        response = await relay.http.delete(resource)
        assert response.status == 200
        assert (await relay.http.delete(resource)).status == 200  # and again: DELETE is idempotent
    never = await relay.http.delete(f"{relay.base}/whep/shop/never-existed")
    assert never.status == 404 and (await never.json())["error"]["code"] == "not_found"
    wrong_room = await relay.http.delete(viewers[1][1].replace("/whep/shop/", "/whep/other/"))
    assert wrong_room.status == 404
    await asyncio.sleep(1.6)  # the age bound
    assert (await relay.http.delete(viewers[2][1])).status == 404


def test_recently_ended_is_bounded_by_age_and_count():
    now = [0.0]
    ended = RecentlyEnded(ttl=10.0, limit=3, clock=lambda: now[0])
    for key in "abcd":
        ended.add(key)
        now[0] += 1.0
    assert "a" not in ended and all(key in ended for key in "bcd") and len(ended) == 3
    now[0] = 11.5  # b ended at 1.0, c at 2.0, d at 3.0
    assert "b" not in ended and "c" in ended and len(ended) == 2
    assert len(RecentlyEnded(ttl=0.0, limit=10, clock=lambda: now[0])) == 0


async def test_cors_preflight_allows_etag_and_exposes_accept_patch(relay):
    viewer, resource = await connected_viewer(relay)
    preflight = await relay.http.options(
        resource,
        headers={"Origin": "http://shop.example", "Access-Control-Request-Method": "PATCH",
                 "Access-Control-Request-Headers": "content-type, etag"},
    )
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"etag", "if-match", "content-type"} <= allowed
    answers = [
        preflight,
        await relay.http.patch(resource, data="x", headers={"Content-Type": "text/plain"}),  # 415
        await relay.http.options(f"{relay.base}/whep/shop"),
    ]
    carrying = [answer for answer in answers if "Accept-Patch" in answer.headers]
    assert len(carrying) == 2
    for answer in carrying:
        assert answer.headers["Accept-Patch"] == SDPFRAG
        exposed = {h.strip().lower() for h in answer.headers["Access-Control-Expose-Headers"].split(",")}
        assert "accept-patch" in exposed
    await viewer.close()


PAGE = """<script>
window.run = async (whep) => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
  });
  const lines = pc.localDescription.sdp.split('\\r\\n');
  const sdp = lines.filter(l => !l.startsWith('a=candidate') || l.includes(' 127.0.0.1 ')).join('\\r\\n');
  const posted = await fetch(whep, {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: sdp});
  const location = new URL(posted.headers.get('Location'), whep).href;
  const etag = posted.headers.get('ETag');
  const acceptPatch = posted.headers.get('Accept-Patch');
  await pc.setRemoteDescription({type: 'answer', sdp: await posted.text()});
  await new Promise(resolve => {
    if (pc.connectionState === 'connected') return resolve();
    pc.addEventListener('connectionstatechange', () => pc.connectionState === 'connected' && resolve());
  });
  const mid = lines.find(l => l.startsWith('a=mid:'));
  const fragment = mid + '\\r\\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\\r\\n';
  // some WHIP/WHEP clients send the ETag they got back as an ETag request header instead of If-Match
  const patched = await fetch(location, {method: 'PATCH', body: fragment,
                                         headers: {'Content-Type': 'application/trickle-ice-sdpfrag', 'ETag': etag}});
  pc.close();  // the page closes its peer connection first, then deletes the resource
  await new Promise(resolve => setTimeout(resolve, 1500));
  const deleted = await fetch(location, {method: 'DELETE'});
  return {posted: posted.status, acceptPatch, patched: patched.status, deleted: deleted.status};
};
</script>"""


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """A page server on its own port: a different origin from the relay's."""
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/"))
    await server.close()


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed")
async def test_cross_origin_page_patches_with_etag_and_deletes_after_closing(relay, other_origin):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(other_origin)
            result = await page.evaluate("whep => window.run(whep)", f"{relay.base}/whep/shop")
        finally:
            await browser.close()
    assert result == {"posted": 201, "acceptPatch": SDPFRAG, "patched": 204, "deleted": 200}
    assert relay.media.peer_count == 0
