"""The recordings API over real HTTP: duration against the frames relayed, Range, bad names, DELETE."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from media_peers import Publisher, broadcast
from test_recording import FrameCapture
from test_recording_failures import engine_config, listing, running, wait_for
from yarl import URL

from engine.app import App
from engine.media.frames import EncodedFrame
from tests.conftest import token


class TimedCapture(FrameCapture):
    """The relay's video frames with their room timestamps (90 kHz), from the first keyframe."""

    def __init__(self) -> None:
        super().__init__()
        self.timestamps: list[int] = []

    def frame(self, room: str, frame: EncodedFrame) -> None:
        if frame.kind == "video" and (self.timestamps or frame.keyframe):
            self.timestamps.append(frame.timestamp)


async def stop(engine: App, http: aiohttp.ClientSession, publisher: Publisher) -> None:
    await http.delete(f"http://127.0.0.1:{engine.http_port}{publisher.location}")
    await publisher.close()
    await wait_for(lambda: asyncio.sleep(0, engine.recordings.recording("demo") is None))

    async def written() -> bool:  # the broadcast ended; its writer finishes the recording, then it is listed done
        return all(r["state"] != "recording" for r in await listing(http, engine))

    await wait_for(written)


async def error_of(response: aiohttp.ClientResponse) -> str:
    assert 400 <= response.status < 500 and response.content_type == "application/json", response
    return (await response.json())["error"]["code"]


async def test_recordings_over_http(tmp_path: Path, h264, opus) -> None:
    async with running(engine_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        capture = TimedCapture()
        engine.media.taps.append(capture)
        first = await broadcast(engine, http, h264, opus)
        await asyncio.sleep(3.0)
        await stop(engine, http, first)
        sent = list(capture.timestamps)
        second = await broadcast(engine, http, h264, opus)
        async def both() -> list[dict[str, Any]]:
            found = await listing(http, engine)
            return found if len(found) == 2 else []

        [in_progress, done] = await wait_for(both)
        assert in_progress["state"] == "recording" and done["state"] == "complete"
        host = {"Authorization": f"Bearer {token(engine, 'demo', 'host', 'host')}"}
        in_progress_url = f"{base}/api/rooms/demo/recordings/{in_progress['id']}"
        assert await error_of(await http.delete(in_progress_url, headers=host)) == "conflict"
        # the lobby's past broadcasts: finished ones of public rooms, newest first, bounded
        recent = await http.get(f"{base}/api/recordings")
        [past] = (await recent.json())["recordings"]  # the one in progress is live, not past
        assert (past["id"], past["room"]) == (done["id"], {"id": "demo", "title": "Demo room"})
        for limit in ("0", "101", "x", "-1", "1" * 30):
            assert await error_of(await http.get(f"{base}/api/recordings", params={"limit": limit})) == "bad_request"
        await stop(engine, http, second)
        assert done["links"]["replay"] == f"{base}/replay/demo/{done['id']}"
        newest = (await (await http.get(f"{base}/api/recordings", params={"limit": "1"})).json())["recordings"]
        assert [r["id"] for r in newest] == [in_progress["id"]]
        assert (await http.patch(f"{base}/api/rooms/demo", json={"private": True},
                                 headers={"Authorization": "Bearer test-admin"})).status == 200
        assert (await (await http.get(f"{base}/api/recordings")).json())["recordings"] == []
        assert (await http.patch(f"{base}/api/rooms/demo", json={"private": False},
                                 headers={"Authorization": "Bearer test-admin"})).status == 200

        # the duration is what the relay forwarded: first keyframe to last frame, plus one frame
        sent_seconds = (sent[-1] - sent[0]) / 90000 + 1 / 30
        assert done["duration"] == pytest.approx(sent_seconds, abs=1 / 60)  # the last frame counts too

        folder = f"{base}/api/rooms/demo/recordings/{done['id']}"
        playlist = await http.get(f"{folder}/index.m3u8")
        assert playlist.content_type == "application/vnd.apple.mpegurl"
        assert (await http.get(f"{folder}/timeline")).content_type == "application/json"
        segment = f"{folder}/seg-000001.m4s"
        whole = await (await http.get(segment)).read()
        assert len(whole) > 200
        for asked, start, end in [("bytes=10-99", 10, 99), ("bytes=-20", len(whole) - 20, len(whole) - 1),
                                  (f"bytes={len(whole) - 5}-", len(whole) - 5, len(whole) - 1)]:
            part = await http.get(segment, headers={"Range": asked})
            assert part.status == 206 and part.content_type == "video/mp4"
            assert part.headers["Content-Range"] == f"bytes {start}-{end}/{len(whole)}"
            assert await part.read() == whole[start:end + 1]
        init = await http.get(f"{folder}/init.mp4", headers={"Range": "bytes=0-7"})
        assert init.status == 206 and init.content_type == "video/mp4" and (await init.read())[4:8] == b"ftyp"
        beyond = await http.get(segment, headers={"Range": f"bytes={len(whole)}-{len(whole) + 10}"})
        assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(whole)}"

        # names that are not a recording's: JSON 4xx, never a file outside the recording
        secret = b"outside-the-recording"
        recordings = engine.config.recordings_path
        for path in (recordings / "secret.txt", recordings / "demo" / "secret.txt",
                     recordings / "demo" / done["id"] / "secret.txt"):
            path.write_bytes(secret)
        rid = done["id"]
        bad = [f"/api/rooms/demo/recordings/{rid}/..%2Fsecret.txt",
               f"/api/rooms/demo/recordings/{rid}/..%2F..%2Fsecret.txt",
               f"/api/rooms/demo/recordings/{rid}/%2e%2e%2f%2e%2e%2fsecret.txt",
               f"/api/rooms/demo/recordings/{rid}/secret.txt",
               f"/api/rooms/demo/recordings/{rid}/recording.json",
               f"/api/rooms/demo/recordings/{rid}/seg-1.m4s",
               f"/api/rooms/demo/recordings/{rid}/%2Fetc%2Fpasswd",
               "/api/rooms/demo/recordings/..%2F..%2Fsecret.txt/index.m3u8",
               "/api/rooms/demo/recordings/..%2Fdemo/timeline",
               "/api/rooms/demo/recordings/..%2F..%2Fdemo/secret.txt",
               "/api/rooms/demo/recordings/%2e%2e/secret.txt",
               "/api/rooms/..%2Frecordings/recordings",
               f"/api/rooms/..%2F..%2Fdemo/recordings/{rid}/seg-000001.m4s",
               f"/api/rooms/nosuchroom/recordings/{rid}/timeline",
               "/api/rooms/nosuchroom/recordings",
               f"/api/rooms/demo/recordings/{'2' * 2000}/timeline",
               f"/api/rooms/demo/recordings/{rid}x/index.m3u8",
               f"/api/rooms/demo/recordings/{rid}/{'seg-000001' * 200}.m4s",
               f"/api/rooms/{'d' * 2000}/recordings"]
        admin = {"Authorization": "Bearer test-admin"}
        for path in bad:
            for method in ("GET", "DELETE"):
                response = await http.request(method, URL(base + path, encoded=True), headers=admin)
                body = await response.read()
                assert secret not in body and b"ftyp" not in body, path
                assert await error_of(response) in ("not_found", "method_not_allowed", "bad_request"), path
        assert len(await listing(http, engine)) == 2

        # DELETE: the room's host or the admin only, and it is gone with its files
        url = f"{base}/api/rooms/demo/recordings/{done['id']}"
        assert await error_of(await http.delete(url)) == "unauthorized"
        viewer = {"Authorization": f"Bearer {token(engine, 'demo', 'viewer', 'v1')}"}
        assert await error_of(await http.delete(url, headers=viewer)) == "forbidden"
        other_host = {"Authorization": f"Bearer {token(engine, 'other', 'host', 'host')}"}
        assert (await http.delete(url, headers=other_host)).status in (401, 403)
        assert (await http.delete(url, headers=host)).status == 200
        assert await error_of(await http.get(f"{url}/index.m3u8")) == "not_found"
        assert not (recordings / "demo" / done["id"] / "init.mp4").exists()
        assert (await http.delete(in_progress_url, headers=admin)).status == 200
        assert await listing(http, engine) == []
