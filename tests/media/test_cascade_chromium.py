"""The watch page in Chromium on one node plays a room whose publisher is on another node.

Two real `livecart serve` nodes on one Redis; an aiortc publisher imitating OBS on node A; the
watch page served by node B negotiates with node B, which pulls the room from node A. Every
packet stays on loopback (the page's candidates are filtered to 127.0.0.1, the nodes announce it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cascade_nodes import MediaNode, ready, start_node, until
from media_peers import Publisher

from tests.browser import CHROMIUM
from tests.conftest import RedisTarget
from tests.web.test_media_pages import PEERS, decoding
from tests.web.test_pages import LOOPBACK_ONLY, WAIT_MS, browser  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed"),
    pytest.mark.timeout(180),
]


async def test_watch_page_on_an_edge_plays_a_room_published_on_the_origin(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        browser: Any, h264: Any, opus: Any) -> None:  # noqa: F811 (the imported fixture)
    nodes += [start_node(tmp_path / name, name, redis_target) for name in ("node-a", "node-b")]
    origin, edge = nodes
    await ready(http, origin, edge)
    key = (await origin.ok(http, "POST", "/api/rooms", {"id": "show"}))["stream_key"]
    await until(lambda: edge.call(http, "GET", "/api/rooms/show"), lambda answer: answer[0] == 200)
    publisher = Publisher(h264, opus, obs_offer=True)
    response = await publisher.publish(http, origin.http, "show", key, {"video": "H264", "audio": "opus"})
    assert response.status == 201, await response.text()

    context = await browser.new_context()
    for script in (LOOPBACK_ONLY, PEERS):
        await context.add_init_script(script)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{edge.http}/watch/show")
    stats = await decoding(page)
    assert stats["videoWidth"] == 320 and stats["peers"] == 1
    view = await edge.media(http, "show")
    assert view["role"] == "edge" and view["upstream"] == "node-a" and view["pull"]["state"] == "live"
    assert (await origin.media(http, "show"))["edges"] == 1
    assert not errors, errors
    await context.close()
    await publisher.close()
