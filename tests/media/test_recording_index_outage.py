"""Two real engines on a Redis of the test's own, which stops: each node goes on listing and
serving its own recordings (and the lobby its past broadcasts), a recording only the other node
holds answers 503 (JSON for the API, a page for the replay), the outage is logged once per node
rather than per request, and listings read the other node again once Redis is back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from media_peers import broadcast
from test_recording_failures import engine_config, running, wait_for
from test_recording_http import stop

from engine.app import App
from tests.redis_server import RedisServer

HEARTBEAT = 0.2


async def listed(http: aiohttp.ClientSession, node: App,
                 path: str = "/api/rooms/demo/recordings") -> list[dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{node.http_port}{path}") as response:
        assert response.status == 200, await response.text()
        return (await response.json())["recordings"]


async def test_listings_and_pages_survive_a_redis_outage(tmp_path: Path, own_redis: RedisServer, h264, opus,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def node(name: str) -> Any:
        return running(engine_config(tmp_path / name, redis_url=own_redis.url, node_heartbeat=HEARTBEAT,
                                     node_ttl=5.0))

    async with node("a") as a, node("b") as b, aiohttp.ClientSession() as http:
        publisher = await broadcast(a, http, h264, opus)
        await asyncio.sleep(3.0)
        await stop(a, http, publisher)
        [done] = await listed(http, a)

        async def on_b() -> bool:
            return [r["id"] for r in await listed(http, b)] == [done["id"]]

        await wait_for(on_b)
        caplog.set_level(logging.WARNING, logger="engine.recording.shared")
        caplog.clear()
        own_redis.stop()
        folder = f"/api/rooms/demo/recordings/{done['id']}"
        for _ in range(3):
            await asyncio.sleep(HEARTBEAT * 1.5)  # past the cached read of the other node's entries
            assert [r["id"] for r in await listed(http, a)] == [done["id"]]
            assert [r["id"] for r in await listed(http, a, "/api/recordings")] == [done["id"]]
            async with http.get(f"http://127.0.0.1:{a.http_port}/replay/demo/{done['id']}") as page:
                assert page.status == 200 and f"{folder}/index.m3u8" in await page.text()
            async with http.get(f"http://127.0.0.1:{a.http_port}{folder}/index.m3u8") as playlist:
                assert playlist.status == 200

            assert await listed(http, b) == []  # B holds none, and cannot read A's entries
            async with http.get(f"http://127.0.0.1:{b.http_port}{folder}/index.m3u8") as playlist:
                assert playlist.status == 503 and playlist.content_type == "application/json"
                assert (await playlist.json())["error"]["code"] == "unavailable"
            async with http.get(f"http://127.0.0.1:{b.http_port}/replay/demo/{done['id']}") as page:
                assert page.status == 503 and page.content_type == "text/html"
                assert '"unavailable":true' in await page.text()
        failures = [r for r in caplog.records if "reading failed" in r.getMessage()]
        assert len(failures) == 2  # once per node for the whole outage

        own_redis.start()
        await wait_for(on_b, timeout=15.0)
