"""An LL-HLS player for tests: blocking reloads, every part fetched, and the video it got, demuxed.

It follows a live playlist as hls.js does at the live edge (asks for the part after the last one
listed, fetches every new part) and hands each playlist to ``check`` (test_hls's RFC checks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import av
from hls_playlists import Playlist, parse
from test_recording import avcc_units


async def follow(http: aiohttp.ClientSession, url: str, seconds: float,
                 check: Callable[[Playlist], None]) -> tuple[bytes, dict[str, bytes], Playlist]:
    """Play ``url`` for ``seconds``: (init segment, part name -> bytes, the last playlist)."""
    base = url.rsplit("/", 1)[0]
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        playlist = parse(await response.text())
    check(playlist)
    parts: dict[str, bytes] = {}
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        msn, part = playlist.next_request()
        async with http.get(f"{url}?_HLS_msn={msn}&_HLS_part={part}") as response:
            assert response.status == 200, await response.text()
            reloaded = parse(await response.text())
        check(reloaded)
        assert reloaded.media_sequence >= playlist.media_sequence
        for listed in reloaded.parts:
            if listed.uri not in parts:
                async with http.get(f"{base}/{listed.uri}") as response:
                    assert response.status == 200 and response.headers["Content-Type"] == "video/iso.segment"
                    parts[listed.uri] = await response.read()
        playlist = reloaded
    async with http.get(f"{base}/{playlist.segments[0].map}") as response:
        assert response.status == 200 and response.headers["Content-Type"] == "video/mp4"
        init = await response.read()
    return init, parts, playlist


def video_units(path: Path, init: bytes, parts: dict[str, bytes]) -> tuple[list[list[bytes]], str]:
    """The NAL units of each video sample of ``init`` + the parts in stream order, as FFmpeg demuxes them
    (written to ``path``), and the audio codec's name."""
    names = sorted(parts, key=lambda name: int(name.rsplit("-", 1)[1].split(".")[0]))
    path.write_bytes(init + b"".join(parts[name] for name in names))
    with av.open(str(path)) as container:
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else ""
        return [avcc_units(bytes(p)) for p in container.demux(container.streams.video[0]) if p.size], audio
