"""Recordings across real `livecart serve` nodes on one Redis: a broadcast recorded on node A is
listed by node B, its files are fetched through B (a 307 to A, followed), its replay page is served
by B, it is deleted through B, and a node that is gone takes its recordings out of every listing."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
from cascade_nodes import SECRET, MediaNode, stop_nodes, until
from test_cascade import cluster, create_room, publish
from yarl import URL

from signaling.tokens import mint
from tests.conftest import RedisTarget

REJOIN = ("--recording-rejoin", "0.3")


async def broadcast_on(http: aiohttp.ClientSession, node: MediaNode, key: str, h264: Any, opus: Any) -> None:
    """A few seconds of H264 + Opus published on ``node``, then the publisher leaves."""
    publisher = await publish(http, node, key, h264, opus)
    await asyncio.sleep(3.0)
    async with http.delete(node.http + publisher.location) as response:
        assert response.status == 200
    await publisher.close()


async def listed(http: aiohttp.ClientSession, node: MediaNode, path: str = "/api/rooms/show/recordings",
                 **params: str) -> list[dict[str, Any]]:
    async with http.get(node.http + path, params=params) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["recordings"]


def complete(recordings: list[dict[str, Any]]) -> bool:
    return bool(recordings) and all(r["state"] == "complete" for r in recordings)


async def test_every_node_lists_and_serves_every_nodes_recordings(
        tmp_path: Path, redis_target: RedisTarget, h264: Any, opus: Any) -> None:
    nodes: list[MediaNode] = []
    try:
        async with aiohttp.ClientSession() as http:
            a, b = await cluster(tmp_path, redis_target, nodes, http, "a", "b", extra={"a": REJOIN, "b": REJOIN})
            key = await create_room(http, a, b)
            await broadcast_on(http, a, key, h264, opus)
            [on_a] = await until(lambda: listed(http, a), complete)
            [on_b] = await until(lambda: listed(http, b), complete)
            assert (on_b["id"], on_b["duration"], on_b["bytes"]) == (on_a["id"], on_a["duration"], on_a["bytes"])
            assert URL(on_b["links"]["hls"]).port == URL(b.http).port  # B's own links, redirected on use
            [recent] = await until(lambda: listed(http, b, "/api/recordings"), bool)
            assert recent["id"] == on_a["id"] and recent["room"]["id"] == "show"

            # the playlist and a segment through B: a 307 to A, the same bytes once followed
            folder = f"/api/rooms/show/recordings/{on_a['id']}"
            async with http.get(b.http + folder + "/index.m3u8", allow_redirects=False) as moved:
                assert moved.status == 307 and moved.headers["Location"] == a.http + folder + "/index.m3u8"
            async with http.get(b.http + folder + "/index.m3u8") as response:
                assert response.status == 200 and str(response.url).startswith(a.http)
                playlist = await response.text()
            segment = next(line for line in playlist.splitlines() if line.startswith("seg-"))
            async with http.get(b.http + f"{folder}/{segment}") as through_b, \
                    http.get(a.http + f"{folder}/{segment}") as on_node_a:
                assert through_b.status == 200 and through_b.content_type == "video/mp4"
                assert await through_b.read() == await on_node_a.read()
            async with http.get(b.http + folder + "/timeline") as response:
                assert response.status == 200 and (await response.json())["recording"] == on_a["id"]
            async with http.get(f"{b.http}/replay/show/{on_a['id']}") as page:
                assert page.status == 200 and f"{folder}/index.m3u8" in await page.text()
            async with http.get(b.http + "/api/rooms/show/recordings/20200101T000000Z-abcdef/index.m3u8") as nothing:
                assert nothing.status == 404 and (await nothing.json())["error"]["code"] == "not_found"

            # private: B checks the token, the redirect keeps ?token=, A's playlist names its files with it
            await a.ok(http, "PATCH", "/api/rooms/show", {"private": True})
            viewer = mint(SECRET, "show", "viewer", "alice", 600)
            await until(lambda: http.get(b.http + folder + "/index.m3u8", allow_redirects=False),
                        lambda response: response.status == 401)
            async with http.get(b.http + folder + "/index.m3u8", params={"token": viewer}) as response:
                assert response.status == 200
                files = re.findall(r"seg-\d+\.m4s\?token=\S+", await response.text())
                assert files and all(URL(name).query["token"] == viewer for name in files)
            await a.ok(http, "PATCH", "/api/rooms/show", {"private": False})

            # deleted through B: B checks the host token and A deletes its files
            url = b.http + f"/api/rooms/show/recordings/{on_a['id']}"
            async with http.delete(url, headers={"Authorization": f"Bearer {viewer}"}) as refused:
                assert refused.status == 403
            host = mint(SECRET, "show", "host", "host", 600)
            # a DELETE another node passed on is never passed on again (stale entries cannot bounce it)
            forwarded = {"Authorization": f"Bearer {host}", "X-Livecart-Forwarded": "1"}
            async with http.delete(url, headers=forwarded) as bounced:
                assert bounced.status == 404 and (await bounced.json())["error"]["code"] == "not_found"
            assert (tmp_path / "a" / "recordings" / "show" / on_a["id"]).exists()
            async with http.delete(url, headers={"Authorization": f"Bearer {host}"}) as deleted:
                assert deleted.status == 200 and (await deleted.json()) == {"deleted": on_a["id"]}
            assert not (tmp_path / "a" / "recordings" / "show" / on_a["id"]).exists()
            assert await listed(http, a) == []
            await until(lambda: listed(http, b), lambda found: found == [])

            # a node that is gone: its recordings are left out (no node could serve their files)
            await broadcast_on(http, a, key, h264, opus)
            [second] = await until(lambda: listed(http, b), complete)
            a.proc.kill()  # no clean stop: B sees A gone once A's registry entry lapses
            await until(lambda: listed(http, b), lambda found: found == [])
            assert await listed(http, b, "/api/recordings") == []
            async with http.get(b.http + f"/api/rooms/show/recordings/{second['id']}/index.m3u8") as gone:
                assert gone.status == 404
    finally:
        stop_nodes(nodes)
