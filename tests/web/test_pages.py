"""The pages in a real browser (Debian Chromium via Playwright) against an in-process engine.

Every packet stays on loopback: the engine announces 127.0.0.1 only and an init script drops the
browser's non-loopback candidates from its offers (the pages themselves send every candidate, as
they must in production). Each test is bounded by a timeout and by Playwright's own waits.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from engine.app import App
from engine.config import Config
from signaling.protocol import CLOSE_TOO_SLOW
from signaling.tokens import mint
from tests.browser import CHROMIUM, FLAGS

WAIT_MS = 20_000

LOOPBACK_ONLY = """
(() => {
  const real = Object.getOwnPropertyDescriptor(RTCPeerConnection.prototype, 'localDescription');
  Object.defineProperty(RTCPeerConnection.prototype, 'localDescription', {
    get() {
      const d = real.get.call(this);
      if (!d) return d;
      const sdp = d.sdp.split('\\r\\n')
        .filter(l => !l.startsWith('a=candidate') || l.includes(' 127.0.0.1 ')).join('\\r\\n');
      return {type: d.type, sdp, toJSON() { return {type: d.type, sdp}; }};
    },
  });
})();
"""

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed"),
    pytest.mark.timeout(120),
]


@pytest.fixture
async def app(config: Config) -> AsyncIterator[App]:
    engine = App(config.replace(announce="127.0.0.1"))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class Pages:
    """Opens pages of one engine and fails the test on any uncaught script error."""

    def __init__(self, app: App, browser: Any) -> None:
        self.base = f"http://127.0.0.1:{app.http_port}"
        self.browser = browser
        self.errors: list[str] = []

    #: Scripts every page runs before its own (only loopback ICE candidates, ...).
    init_scripts: tuple[str, ...] = (LOOPBACK_ONLY,)

    async def open(self, path: str, **context: Any) -> Any:
        ctx = await self.browser.new_context(**context)
        for script in self.init_scripts:
            await ctx.add_init_script(script)
        page = await ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: self.errors.append(f"{path}: {exc}"))
        await page.goto(self.base + path)
        return page


@pytest.fixture
def pages(app: App, browser: Any) -> Pages:
    opened = Pages(app, browser)
    yield opened
    assert not opened.errors, opened.errors


def host_token(app: App, room: str = "demo") -> str:
    return mint(app.secret, room, "host", "host-1", 3600)


async def test_lobby_lists_rooms_and_pages_carry_the_websocket_url(app: App, pages: Pages) -> None:
    page = await pages.open("/")
    card = page.locator(".room-card[data-room=demo]")
    await card.wait_for()
    assert await card.locator("a", has_text="Watch").get_attribute("href") == "/watch/demo"
    assert await card.locator("a", has_text="Studio").get_attribute("href") == "/studio/demo"

    watch = await pages.open("/watch/demo")
    assert await watch.evaluate("LC.settings.ws") == f"ws://127.0.0.1:{app.ws_port}/ws"
    await watch.locator("#conn.open").wait_for(state="attached")

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{pages.base}/watch/nowhere") as response:
            assert response.status == 404
            assert "livecart-config" in await response.text()
        async with http.get(f"{pages.base}/web/missing.js") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
    missing = await pages.open("/studio/nowhere")
    assert "nowhere" in await missing.locator("#missing").inner_text()


async def test_studio_publishes_the_camera_and_viewers_play_it(app: App, pages: Pages) -> None:
    studio = await pages.open("/studio/demo")  # the host types the token and the stream key
    await studio.fill("#host-token", host_token(app))
    await studio.click("#signin button[type=submit]")
    await studio.locator("#signin").wait_for(state="hidden")
    await studio.fill("#stream-key", "sk_wrong")
    await studio.click("#go-live")
    await studio.locator("#publish-status.error", has_text="stream key is wrong").wait_for()
    await studio.fill("#stream-key", app.rooms.get("demo").stream_key)
    await studio.click("#go-live")
    await studio.locator("#publish-status", has_text="You are live").wait_for()

    whep = await pages.open("/watch/demo")
    over_ws = await pages.open("/watch/demo?via=ws", viewport={"width": 390, "height": 844}, is_mobile=True)
    for viewer in (whep, over_ws):
        await viewer.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=WAIT_MS)
        await viewer.locator("#live", has_text="Live").wait_for()
        await viewer.locator("#stage-msg").wait_for(state="hidden")

    await studio.click("#go-live")  # end the stream: DELETE of the WHIP session
    await whep.locator("#live", has_text="Offline").wait_for()


async def test_host_pins_and_sells_viewers_tap_and_check_out(app: App, pages: Pages) -> None:
    studio = await pages.open(f"/studio/demo?token={host_token(app)}")
    await studio.click("#product-editor summary")
    form = studio.locator("#product-form")
    await form.locator("[name=title]").fill("Linen shirt")
    await form.locator("[name=price]").fill("49.90")
    await form.locator("[name=stock]").fill("20")
    await form.locator("button[type=submit]").click()
    product = studio.locator(".product", has_text="Linen shirt")
    await product.wait_for()
    product_id = await product.get_attribute("data-product")

    await product.locator("button.pin").click()
    layer = await studio.locator("#tags").bounding_box()
    await studio.mouse.click(layer["x"] + layer["width"] * 0.3, layer["y"] + layer["height"] * 0.4)
    await studio.locator(f"#tags .tag[data-product='{product_id}'] .tag-card").wait_for()

    await product.locator("button.sale").click()
    sale_form = product.locator(".sale-form")
    await sale_form.locator("[name=price]").fill("29.90")
    await sale_form.locator("[name=quantity]").fill("5")
    await sale_form.locator("[name=per_user_limit]").fill("2")
    await sale_form.locator("button[type=submit]").click()
    await studio.locator("#sales .sale-card.live .sale-remaining", has_text="5").wait_for()

    buyer = await pages.open("/watch/demo")
    other = await pages.open("/watch/demo", viewport={"width": 390, "height": 844}, is_mobile=True)
    tag = buyer.locator(f"#tags .tag[data-product='{product_id}']")
    await tag.locator(".tag-card").wait_for()
    left, top = (float(v) for v in re.findall(r"([\d.]+)%", await tag.get_attribute("style")))
    assert abs(left - 30) < 1 and abs(top - 40) < 1  # where the host clicked, in % of the picture
    await tag.locator(".tag-price", has_text="29.90").wait_for()
    remaining = ".sale-card.live .sale-remaining"
    await other.locator(remaining, has_text="5").wait_for()
    await other.locator(".sale-card .countdown", has_text="ends in").wait_for()

    await tag.locator("button.tag-buy").click()
    await buyer.locator("#cart-count", has_text="1").wait_for()
    # The ack names the line that came just before it (cart.added): the page says how long it is held.
    await buyer.locator("#toast", has_text="held for").wait_for()
    await other.locator(remaining, has_text="4").wait_for()
    await buyer.click(".sale-card button.grab")
    await other.locator(remaining, has_text="3").wait_for()
    await buyer.click(".sale-card button.grab")  # past the per-person limit of 2
    await buyer.locator("#toast.error", has_text="most this sale allows").wait_for()

    await buyer.click("#cart-button")
    lines = buyer.locator("#cart-lines .cart-line")
    assert await lines.count() == 2
    await lines.first.locator(".countdown", has_text=":").wait_for()
    await lines.first.locator("button.remove").click()
    await other.locator(remaining, has_text="4").wait_for()
    await buyer.locator("#cart-total", has_text="29.90").wait_for()

    await buyer.click("#checkout")
    dialog = buyer.locator("#order-dialog")
    await dialog.wait_for()
    await dialog.locator("#order-total", has_text="29.90").wait_for()
    assert await buyer.locator("#cart-count").inner_text() == "0"
    await studio.locator("#stat-orders", has_text="1").wait_for()
    await studio.locator("#stat-revenue", has_text="29.90").wait_for()


async def test_watch_page_resumes_after_the_server_drops_it(app: App, pages: Pages) -> None:
    """Closed as too slow, the page reconnects with since=<last seq>: what it missed is replayed once."""
    viewer = await pages.open("/watch/demo")
    await viewer.locator("#conn.open").wait_for(state="attached")
    await viewer.click("[data-tab=chat]")
    host = await websockets.connect(f"ws://127.0.0.1:{app.ws_port}/ws?token={host_token(app)}", max_queue=None)
    assert orjson.loads(await host.recv())["type"] == "snapshot"

    async def say(request_id: int, text: str) -> None:
        await host.send(orjson.dumps({"type": "chat", "id": request_id, "text": text}).decode())
        while True:
            reply = orjson.loads(await asyncio.wait_for(host.recv(), 5))
            if reply.get("re") == request_id:
                assert reply["type"] == "ack", reply
                return

    await say(1, "before the drop")
    await viewer.locator("#chat-log .chat-line", has_text="before the drop").wait_for()

    dropped = [s for s in app.channel.sessions.values() if s.role == "viewer"]
    assert len(dropped) == 1
    dropped[0].close(CLOSE_TOO_SLOW, "too slow: reconnect with since")
    await viewer.locator("#conn.reconnecting").wait_for(state="attached")
    await say(2, "while away")
    await viewer.locator("#conn.open").wait_for(state="attached")
    await say(3, "after the return")
    await viewer.locator("#chat-log .chat-line", has_text="after the return").wait_for()
    texts = await viewer.locator("#chat-log .chat-line span").all_inner_texts()
    assert texts == ["before the drop", "while away", "after the return"]
    await host.close()
