"""The nginx cache configuration of docs/OPERATIONS.md in front of a live room's LL-HLS.

A real nginx (the guide's ``location``, only ports and paths changed) proxies a running engine with
an aiortc publisher; players' requests go through nginx. nginx must be installed (CI installs it):
without it this test fails, it is not skipped.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
from hls_nginx import NGINX, Nginx
from hls_playlists import parse
from media_peers import broadcast
from test_hls import get, hls_config, sample

from engine.hls.playlist import FILE, part_name
from tests.conftest import running

WAITS = 'livecart_hls_block_wait_seconds_count{kind="playlist"}'


def number(name: str) -> int:
    """The part number in a part's file name."""
    return int(FILE.fullmatch(name).group(3))


async def test_documented_nginx_cache_in_front_of_live_hls(tmp_path: Path, h264_gop30, opus) -> None:
    assert os.access(NGINX, os.X_OK), "nginx is needed (apt-get install nginx)"
    async with running(hls_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        origin = f"http://127.0.0.1:{engine.http_port}"
        nginx = Nginx(tmp_path / "nginx", engine.http_port)
        try:
            await asyncio.to_thread(nginx.wait_listening)
            publisher = await broadcast(engine, http, h264_gop30, opus)
            url = f"{nginx.base}/hls/demo/index.m3u8"
            response, body = await get(http, url)  # the first request starts the room's stream
            assert response.status == 200 and response.headers["X-Cache-Status"] == "MISS", body

            # parts, segments and the init segment: fetched once from the engine, then from the cache
            await asyncio.sleep(2.5)
            playlist = parse((await get(http, url + "?_HLS_msn=0"))[1].decode())
            complete = next(s for s in playlist.segments if s.uri is not None)
            for name in (complete.parts[0].uri, complete.uri, playlist.segments[0].map):
                first, data = await get(http, f"{nginx.base}/hls/demo/{name}")
                second, again = await get(http, f"{nginx.base}/hls/demo/{name}")
                assert first.status == second.status == 200, name
                assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == ("MISS", "HIT"), name
                assert data == again == (await get(http, f"{origin}/hls/demo/{name}"))[1]

            # the plain playlist is cached for its max-age (nginx counts whole seconds: one more at most)
            max_age = int(response.headers["Cache-Control"].rsplit("=", 1)[1])
            loop = asyncio.get_running_loop()
            until = loop.time() + 6.0
            statuses = set()
            while loop.time() < until:
                fresh = parse((await get(http, f"{origin}/hls/demo/index.m3u8"))[1].decode())
                await asyncio.sleep(max_age + 1.05)
                response, body = await get(http, url)
                statuses.add(response.headers["X-Cache-Status"])
                cached = parse(body.decode())
                # the copy nginx answers was made after ``fresh``: it lists every part ``fresh`` listed
                assert number(cached.hint) >= number(fresh.hint)
            assert statuses <= {"EXPIRED", "MISS"}  # never a copy older than that
            await get(http, url)
            assert (await get(http, url))[0].headers["X-Cache-Status"] == "HIT"  # within max-age: cached

            # a blocking reload goes through nginx and returns once its part exists; identical ones asked
            # at once are collapsed (proxy_cache_lock): one goes to the engine, the others get its answer
            served = 'livecart_hls_requests_total{kind="playlist",status="200"}'
            _, window = engine.hls.stream("demo")
            while len(window.segments[-1].parts) > 1:  # early in a segment: the next one is far enough ahead
                await window.wait_change(2.0)
            msn, part = window.segments[-1].msn + 1, 0
            before = await sample(http, origin)
            blocking = f"{url}?_HLS_msn={msn}&_HLS_part={part}"
            answers = await asyncio.gather(*(get(http, blocking) for _ in range(5)))
            after = await sample(http, origin)
            assert sorted(response.headers["X-Cache-Status"] for response, _ in answers) == ["HIT"] * 4 + ["MISS"]
            assert after[served] - before[served] == 1
            assert after[WAITS] - before.get(WAITS, 0) == 1  # it waited for the part
            bodies = {body for _, body in answers}
            assert len(bodies) == 1 and all(response.status == 200 for response, _ in answers)
            reloaded = parse(bodies.pop().decode())
            assert (reloaded.segments[-1].msn, len(reloaded.segments[-1].parts) - 1) == (msn, part)
            # the preload hint: identical requests for the part not made yet wait together, one of them in
            # the engine, and all get the part once it is complete
            stream, window = engine.hls.stream("demo")
            hint = part_name(stream, window.next_part)  # what the playlist names now as EXT-X-PRELOAD-HINT
            hinted = f"{nginx.base}/hls/demo/{hint}"
            parts_before = await sample(http, origin)
            answers = await asyncio.gather(*(get(http, hinted) for _ in range(5)))
            parts_after = await sample(http, origin)
            assert sorted(response.headers["X-Cache-Status"] for response, _ in answers) == ["HIT"] * 4 + ["MISS"]
            part_served = 'livecart_hls_requests_total{kind="part",status="200"}'
            assert parts_after[part_served] - parts_before.get(part_served, 0) == 1
            assert len({body for _, body in answers}) == 1
            assert answers[0][1] == (await get(http, f"{origin}/hls/demo/{hint}"))[1]
            # a request that cannot be answered (too far ahead: 400) is not cached
            too_far = f"{url}?_HLS_msn={msn + 10}"
            for _ in range(2):
                response, _ = await get(http, too_far)
                assert response.status == 400 and response.headers["X-Cache-Status"] == "MISS"
            await http.delete(origin + publisher.location)
            await publisher.close()
        finally:
            nginx.stop()
