"""A private room's recordings need what its live stream needs: a viewer (or host) token of the room,
sent as ``Authorization: Bearer`` or ``?token=``; the playlist names its files with that token so a
player without custom headers (ffmpeg here) plays it. Everything goes through real HTTP."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import av
from media_peers import broadcast
from test_recording_failures import engine_config, listing, running
from test_recording_http import stop
from yarl import URL

from engine.app import App
from signaling.tokens import mint
from tests.conftest import token

ADMIN = {"Authorization": "Bearer test-admin"}


async def refusal(response: aiohttp.ClientResponse) -> tuple[int, str]:
    """The status and error code of a refused request (always JSON)."""
    assert response.content_type == "application/json", await response.text()
    return response.status, (await response.json())["error"]["code"]


async def recorded(engine: App, http: aiohttp.ClientSession, h264: Any, opus: Any) -> dict[str, Any]:
    publisher = await broadcast(engine, http, h264, opus)
    await asyncio.sleep(3.0)
    await stop(engine, http, publisher)
    [done] = await listing(http, engine)
    return done


async def test_a_private_rooms_recordings_need_a_viewer_token_of_it(tmp_path: Path, h264, opus) -> None:
    async with running(engine_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        done = await recorded(engine, http, h264, opus)
        folder = f"{base}/api/rooms/demo/recordings/{done['id']}"
        assert "token=" not in (await (await http.get(f"{folder}/index.m3u8")).text())  # public: as before
        assert "token=" not in (await (await http.get(f"{folder}/index.m3u8", headers=ADMIN)).text())
        response = await http.get(f"{folder}/init.mp4", headers=ADMIN)
        assert response.headers["Cache-Control"].startswith("public")
        assert (await http.patch(f"{base}/api/rooms/demo", json={"private": True}, headers=ADMIN)).status == 200

        viewer = token(engine, "demo", "viewer", "alice")
        wrong = {
            None: (401, "unauthorized"),
            "not-a-jwt": (401, "unauthorized"),
            mint(engine.secret, "demo", "viewer", "guest-1", 60, guest=True): (403, "forbidden"),
            token(engine, "other", "viewer", "alice"): (403, "forbidden"),
            mint("another-secret-" + "y" * 32, "demo", "viewer", "alice"): (401, "unauthorized"),
        }
        urls = [f"{base}/api/rooms/demo/recordings", f"{folder}/index.m3u8", f"{folder}/timeline",
                f"{folder}/init.mp4", f"{folder}/seg-000001.m4s", f"{folder[:-3]}000/index.m3u8"]
        for url in urls:
            for bad, expected in wrong.items():
                headers = {"Authorization": f"Bearer {bad}"} if bad else {}
                response = await http.get(url, headers=headers)
                assert await refusal(response) == expected, (url, bad)
                if expected[0] == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                if bad:
                    assert await refusal(await http.get(url, params={"token": bad})) == expected, (url, bad)
        # the lobby never lists a private room's past broadcasts, token or not
        assert (await (await http.get(f"{base}/api/recordings")).json())["recordings"] == []

        # a viewer or host token of the room, as a header or in the query: the listing's links carry it
        for how in ({"headers": {"Authorization": f"Bearer {viewer}"}}, {"params": {"token": viewer}}):
            response = await http.get(f"{base}/api/rooms/demo/recordings", **how)
            [listed] = (await response.json())["recordings"]
            assert listed["id"] == done["id"]
            for link in listed["links"].values():
                assert URL(link).query["token"] == viewer
        host = token(engine, "demo", "host", "host")
        assert (await http.get(f"{folder}/timeline", params={"token": host})).status == 200

        # the playlist names its files with the token: fetched without any header, as players do
        playlist_url = f"{folder}/index.m3u8?token={viewer}"
        text = await (await http.get(f"{folder}/index.m3u8", headers={"Authorization": f"Bearer {viewer}"})).text()
        files = re.findall(r'URI="([^"]+)"', text) + [line for line in text.splitlines() if line.startswith("seg-")]
        assert len(files) >= 2 and all(URL(name).query["token"] == viewer for name in files)
        for name in files:
            response = await http.get(URL(playlist_url).join(URL(name)))
            assert response.status == 200 and response.content_type == "video/mp4"
            assert response.headers["Cache-Control"].startswith("private")
        part = await http.get(URL(playlist_url).join(URL(files[1])), headers={"Range": "bytes=0-9"})
        assert part.status == 206 and len(await part.read()) == 10
        # the admin key is a header players cannot send: its playlist names the files with a viewer
        # token minted for it, so they play without headers; fetched with the key they stay private
        text = await (await http.get(f"{folder}/index.m3u8", headers=ADMIN)).text()
        minted = re.findall(r"seg-\d+\.m4s\?token=\S+", text)
        assert minted and all(URL(name).query["token"] != viewer for name in minted)
        response = await http.get(f"{folder}/{minted[0]}")
        assert response.status == 200 and response.headers["Cache-Control"].startswith("private")
        response = await http.get(f"{folder}/init.mp4", headers=ADMIN)
        assert response.status == 200 and response.headers["Cache-Control"].startswith("private")
        listed_by_admin = (await (await http.get(f"{base}/api/rooms/demo/recordings", headers=ADMIN)).json())
        assert "token=" in listed_by_admin["recordings"][0]["links"]["hls"]
        # ffmpeg (through PyAV) plays the playlist from its URL alone
        packets = await asyncio.to_thread(video_packets, playlist_url)
        assert packets > 30

        # the replay page: refused without the token (a page saying why), given it with the token
        page = await http.get(f"{base}/replay/demo/{done['id']}")
        assert page.status == 401 and "is private" in await page.text()
        page = await http.get(f"{base}/replay/demo/{done['id']}", params={"token": token(engine, "other")})
        assert page.status == 403
        page = await http.get(f"{base}/replay/demo/{done['id']}", params={"token": viewer})
        assert page.status == 200 and f"index.m3u8?token={viewer}" in await page.text()

        # deleting still takes the host (or admin), whatever the privacy
        assert (await http.delete(folder, params={"token": viewer})).status == 401
        deleted = await http.delete(folder, headers={"Authorization": f"Bearer {host}"})
        assert deleted.status == 200
        assert await refusal(await http.get(f"{folder}/timeline", params={"token": viewer})) == (404, "not_found")


def video_packets(url: str) -> int:
    with av.open(url, timeout=10) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)
