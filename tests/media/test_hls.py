"""Live LL-HLS through the real engine: an aiortc publisher over WHIP, players' requests over HTTP.

The clip has a keyframe every second and the engine cuts 1 s segments of 0.25 s parts, so a test
of ten seconds sees a window long enough for delta updates (CAN-SKIP-UNTIL: six target durations).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hls_player import video_units
from hls_playlists import Playlist, parse
from media_peers import broadcast, encode_video
from test_recording import FrameCapture

from engine.config import Config
from engine.recording.h264 import nal_units
from signaling.tokens import mint
from tests.conftest import running, token

PART = 0.25


def hls_config(tmp_path: Path, **changes: Any) -> Config:
    return Config(host="127.0.0.1", http_port=0, ws_port=0, data_dir=str(tmp_path / "data"),
                  secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20, demo_catalog=False,
                  announce="127.0.0.1", record=False, hls_part=PART, hls_segment=1.0, hls_window=10,
                  **{"hls_block_timeout": 2.0, **changes})


async def get(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.get(url) as response:
        return response, await response.read()


async def sample(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The engine's /metrics as series -> value (metrics are the process's: compare before and after)."""
    text = await (await http.get(f"{base}/metrics")).text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def check_playlist(playlist: Playlist, settled_from: int = 0) -> None:
    """What RFC 8216bis asks of a live LL-HLS media playlist, for what this engine writes. Parts
    shorter than 85 % of the target are allowed only in segments before ``settled_from``."""
    tags = playlist.tags
    target = int(tags["EXT-X-TARGETDURATION"])
    part_target = float(tags["EXT-X-PART-INF"].split("=")[1])
    control = dict(item.split("=") for item in tags["EXT-X-SERVER-CONTROL"].split(","))
    assert tags["EXT-X-VERSION"] == "9" and part_target == PART
    assert control["CAN-BLOCK-RELOAD"] == "YES"
    assert float(control["PART-HOLD-BACK"]) >= 3 * part_target
    assert float(control["CAN-SKIP-UNTIL"]) >= 6 * target
    assert playlist.segments[0].map is not None and playlist.hint is not None
    for segment in playlist.segments:
        if segment.duration is not None:
            assert round(segment.duration) <= target
        if segment.parts:
            assert segment.parts[0].independent
            assert all(part.duration <= part_target for part in segment.parts)
            # every part but a segment's last lasts 85 % of the part target at least
            if segment.msn >= settled_from:
                assert all(part.duration >= 0.85 * part_target for part in segment.parts[:-1])
            if segment.duration is not None:
                assert sum(part.duration for part in segment.parts) == pytest.approx(segment.duration, abs=1e-3)
    assert [s.msn for s in playlist.segments] == list(range(playlist.segments[0].msn,
                                                               playlist.segments[0].msn + len(playlist.segments)))


async def test_live_playlist_blocking_reload_parts_and_identical_video(tmp_path: Path, h264_gop30, opus) -> None:
    async with running(hls_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        capture = FrameCapture()
        engine.media.taps.append(capture)
        base = f"http://127.0.0.1:{engine.http_port}"
        url = f"{base}/hls/demo/index.m3u8"
        room = await (await http.get(f"{base}/api/rooms/demo")).json()
        assert room["links"]["hls"] == url
        publisher = await broadcast(engine, http, h264_gop30, opus)
        await asyncio.sleep(1.0)
        assert engine.hls.stream("demo") is None  # nobody asked: the room is not segmented

        response, body = await get(http, url)
        assert response.status == 200, body
        assert response.headers["Content-Type"] == "application/vnd.apple.mpegurl"
        assert response.headers["Cache-Control"] == "public, max-age=1"
        playlist = parse(body.decode())
        check_playlist(playlist)
        first = playlist
        parts: dict[str, bytes] = {}
        loop = asyncio.get_running_loop()
        until = loop.time() + 9.0
        while loop.time() < until:
            msn, part = playlist.next_request()
            _, window = engine.hls.stream("demo")
            assert not window.reached(msn, part)  # the request below has to wait for it
            response, body = await get(http, f"{url}?_HLS_msn={msn}&_HLS_part={part}")
            assert response.status == 200, body
            reloaded = parse(body.decode())
            # cached a target duration: the answer to this URL stays right for any player asking it
            assert response.headers["Cache-Control"] == f"public, max-age={reloaded.tags['EXT-X-TARGETDURATION']}"
            check_playlist(reloaded)
            assert reloaded.media_sequence >= playlist.media_sequence
            assert int(reloaded.tags["EXT-X-TARGETDURATION"]) == int(first.tags["EXT-X-TARGETDURATION"])
            # answered with the part asked for (part N past a segment's last is part 0 of the next), and
            # as soon as it existed: the asked part is the playlist's last
            asked = {s.msn: s for s in reloaded.segments}.get(msn)
            if asked is not None and asked.uri is not None and part == len(asked.parts):
                msn, part = msn + 1, 0  # past a segment's last part: part 0 of the next
            last = reloaded.segments[-1]
            assert (last.msn, len(last.parts) - 1) == (msn, part)
            assert reloaded.hint is not None and reloaded.hint != playlist.hint
            for listed in reloaded.parts:
                if listed.uri not in parts:
                    response, data = await get(http, f"{base}/hls/demo/{listed.uri}")
                    assert response.status == 200 and response.headers["Content-Type"] == "video/iso.segment"
                    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                    parts[listed.uri] = data
            playlist = reloaded

        # segments are their parts; the init segment is video/mp4
        for segment in playlist.segments:
            if segment.uri is not None and all(p.uri in parts for p in segment.parts) and segment.parts:
                response, data = await get(http, f"{base}/hls/demo/{segment.uri}")
                assert response.status == 200 and response.headers["Content-Type"] == "video/iso.segment"
                assert data == b"".join(parts[p.uri] for p in segment.parts)
        response, init = await get(http, f"{base}/hls/demo/{playlist.segments[0].map}")
        assert response.status == 200 and response.headers["Content-Type"] == "video/mp4"
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"

        # the preload hint resolves to the next part, once it is complete
        hint = playlist.hint
        response, hinted = await get(http, f"{base}/hls/demo/{hint}")
        assert response.status == 200 and response.headers["Content-Type"] == "video/iso.segment"
        response, body = await get(http, url)
        after = parse(body.decode())
        [listed] = [p for p in after.parts if p.uri == hint]
        assert hinted == (await get(http, f"{base}/hls/demo/{hint}"))[1]

        # a delta update leaves out the segments ending more than CAN-SKIP-UNTIL before the live edge
        response, body = await get(http, f"{url}?_HLS_skip=YES")
        delta = parse(body.decode())
        full = parse((await get(http, url))[1].decode())
        skip_until = float(dict(i.split("=") for i in full.tags["EXT-X-SERVER-CONTROL"].split(","))["CAN-SKIP-UNTIL"])
        skipped = int(delta.tags["EXT-X-SKIP"].split("=")[1])
        assert skipped > 0 and delta.media_sequence == full.media_sequence
        end = sum(s.duration or sum(p.duration for p in s.parts) for s in full.segments)
        ends = [sum(s.duration or 0 for s in full.segments[:i + 1]) for i in range(len(full.segments))]
        assert skipped == sum(1 for e in ends if end - e > skip_until + 1e-6)
        assert [s.uri for s in delta.segments] == [s.uri for s in full.segments[skipped:]]
        assert delta.segments[0].msn == full.segments[skipped].msn and delta.segments[0].map is not None

        await http.delete(base + publisher.location)
        await publisher.close()

    # the video of the parts, demuxed by FFmpeg, is the publisher's access units byte for byte
    samples, audio = video_units(tmp_path / "live.mp4", init, parts)
    assert audio == "opus"
    published = [nal_units(frame) for frame in capture.video]
    assert len(samples) > 200
    start = published.index(samples[0])
    assert samples == published[start:start + len(samples)]


async def test_bad_queries_waits_and_limits(tmp_path: Path, h264_gop30, opus) -> None:
    config = hls_config(tmp_path, hls_max_blocked=2, hls_idle=2.0, hls_block_timeout=3.0)
    async with running(config) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        url = f"{base}/hls/demo/index.m3u8"
        before = await sample(http, base)
        response, body = await get(http, f"{base}/hls/nowhere/index.m3u8")
        assert response.status == 404 and b"not_found" in body
        # a room without a publisher: the first request waits for a stream, then 503
        started = asyncio.get_running_loop().time()
        response, body = await get(http, url)
        assert response.status == 503 and response.headers["Content-Type"] == "application/json"
        assert asyncio.get_running_loop().time() - started >= config.hls_block_timeout

        publisher = await broadcast(engine, http, h264_gop30, opus)
        playlist = parse((await get(http, url))[1].decode())
        last = playlist.segments[-1].msn
        for query in ("_HLS_msn=abc", "_HLS_msn=-1", "_HLS_msn=1.5", "_HLS_part=1", f"_HLS_msn={last}&_HLS_part=x",
                      "_HLS_skip=NO", "_HLS_skip=v2", f"_HLS_msn={last + 3}", f"_HLS_msn={'9' * 13}",
                      "_HLS_msn=%C2%B2"):  # a superscript two: a digit to str.isdigit, not to int()
            response, body = await get(http, f"{url}?{query}")
            assert response.status == 400, query
            assert response.headers["Content-Type"] == "application/json"
            assert (await response.json())["error"]["code"] == "bad_request"
        for name in ("seg-00000000-0.m4s", "part-zz-1.m4s", "../index.m3u8", "init-1.mp4"):
            response, body = await get(http, f"{base}/hls/demo/{name}")
            assert response.status == 404 and b"not_found" in body, name
        too_far = f"part-{engine.hls.stream('demo')[0]}-{engine.hls.stream('demo')[1].next_part + 1}.m4s"
        assert (await get(http, f"{base}/hls/demo/{too_far}"))[0].status == 404

        # two segments ahead waits; beyond --hls-max-blocked waiting requests, 503 at once
        msn = playlist.segments[-1].msn + 2
        waiting = [asyncio.ensure_future(get(http, f"{url}?_HLS_msn={msn}&_HLS_part=0")) for _ in range(2)]
        await asyncio.sleep(0.3)
        response, body = await get(http, f"{url}?_HLS_msn={msn}")
        assert response.status == 503 and (await response.json())["error"]["code"] == "overloaded"
        for answer in await asyncio.gather(*waiting):
            assert answer[0].status == 200
            assert parse(answer[1].decode()).segments[-1].msn >= msn

        live = await sample(http, base)
        assert live['livecart_hls_parts_total{room="demo"}'] > 0

        # the publisher leaves: a blocking reload for the next part times out with 503
        await http.delete(base + publisher.location)
        await publisher.close()
        await asyncio.sleep(0.5)
        ended = parse((await get(http, url))[1].decode())
        msn, part = ended.next_request()
        response, body = await get(http, f"{url}?_HLS_msn={msn}&_HLS_part={part}")
        assert response.status == 503 and (await response.json())["error"]["code"] == "overloaded"

        # nobody asks for --hls-idle seconds: the stream stops
        async with asyncio.timeout(10):
            while engine.hls.stream("demo") is not None:
                await asyncio.sleep(0.2)
        after = await sample(http, base)
        assert after['livecart_hls_requests_total{kind="playlist",status="400"}'] - before.get(
            'livecart_hls_requests_total{kind="playlist",status="400"}', 0) == 10
        assert after['livecart_hls_requests_total{kind="playlist",status="503"}'] - before.get(
            'livecart_hls_requests_total{kind="playlist",status="503"}', 0) == 3
        assert after['livecart_hls_block_wait_seconds_count{kind="playlist"}'] - before.get(
            'livecart_hls_block_wait_seconds_count{kind="playlist"}', 0) == 3
        assert after["livecart_hls_live_rooms"] == 0 and after["livecart_hls_blocked_requests"] == 0
        # the stopped stream's per-room series are gone: a node's metrics stay bounded
        assert not [series for series in after if 'room="demo"' in series and series.startswith("livecart_hls_")]


async def test_a_private_rooms_hls_needs_a_viewer_token_of_it(tmp_path: Path, h264_gop30, opus) -> None:
    """What watching a private room live needs (a viewer token of it, never a guest's), as a Bearer
    header or ?token=; the playlist names each file with the token (players send no headers), and
    nothing of it may sit in a shared cache."""
    async with running(hls_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        url = f"{base}/hls/demo/index.m3u8"
        admin = {"Authorization": "Bearer test-admin"}
        assert (await http.patch(f"{base}/api/rooms/demo", json={"private": True}, headers=admin)).status == 200
        publisher = await broadcast(engine, http, h264_gop30, opus)
        viewer = token(engine, "demo", "viewer", "alice")
        refused = {None: 401, "not-a-jwt": 401, token(engine, "other", "viewer", "alice"): 403,
                   mint(engine.secret, "demo", "viewer", "guest-1", 60, guest=True): 403}
        for bad, status in refused.items():
            response, body = await get(http, url + (f"?token={bad}" if bad else ""))
            assert response.status == status and response.headers["Content-Type"] == "application/json", bad
        assert engine.hls.stream("demo") is None  # a refused request starts nothing

        response, body = await get(http, f"{url}?token={viewer}")
        assert response.status == 200 and response.headers["Cache-Control"].startswith("private"), response.headers
        playlist = parse(body.decode())
        files = re.findall(r'URI="([^"]+)"', body.decode())
        files += [line for line in body.decode().splitlines() if line and not line.startswith("#")]
        assert files and all(name.endswith(f"?token={viewer}") for name in files), files
        for name in files[:3]:  # fetched as a player does: the name as given, no header
            response, _ = await get(http, f"{base}/hls/demo/{name}")
            assert response.status == 200 and response.headers["Cache-Control"].startswith("private"), name
            bare = name.split("?")[0]
            assert (await get(http, f"{base}/hls/demo/{bare}"))[0].status == 401, bare
        async with http.get(url, headers={"Authorization": f"Bearer {viewer}"}) as response:  # a header does too
            assert response.status == 200
        assert playlist.segments
        await http.delete(base + publisher.location)
        await publisher.close()


async def test_a_publisher_without_keyframes_cannot_grow_a_segment_past_the_window(tmp_path: Path, opus) -> None:
    """A segment ends only at a keyframe. The engine asks for one once a segment passes its target;
    a publisher that sends none (this clip has one every 4 s and ignores requests) gets its stream
    started again once a segment would span the whole window (2 s here), so no segment grows past it."""
    clip = encode_video("h264", frames=120, gop=120)
    async with running(hls_config(tmp_path).replace(hls_window=2)) as engine, \
            aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{engine.http_port}/hls/demo/index.m3u8"
        publisher = await broadcast(engine, http, clip, opus)
        streams: set[str] = set()
        longest = 0.0
        deadline = asyncio.get_running_loop().time() + 12
        while asyncio.get_running_loop().time() < deadline:
            response, body = await get(http, url)
            if response.status == 200:
                streams.add(engine.hls.stream("demo")[0])
                for segment in parse(body.decode()).segments:
                    span = segment.duration if segment.duration is not None else sum(p.duration for p in segment.parts)
                    longest = max(longest, span)
            await asyncio.sleep(0.2)
        assert len(streams) >= 2, streams  # started again
        assert longest <= 2 * 1.0 + PART, longest
        await http.delete(f"http://127.0.0.1:{engine.http_port}{publisher.location}")
        await publisher.close()
