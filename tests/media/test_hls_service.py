"""The live HLS service and window on the loop, without HTTP: first requests waiting for a stream,
and playlists rendered once per change."""

from __future__ import annotations

import asyncio
import time

from engine.hls.playlist import CACHED_PLAYLISTS, media_playlist, playlist_bytes
from engine.hls.service import HlsConfig, HlsService
from engine.hls.window import LiveWindow


async def test_every_first_request_wakes_when_the_stream_begins() -> None:
    """Two first requests wait for a room's stream; the earlier gives up; then the stream begins:
    the later one is answered once the stream holds a part, not at its own deadline."""
    service = HlsService(HlsConfig(), codecs=lambda room: {}, keyframe=lambda room: None)
    await service.start()
    try:
        early = asyncio.ensure_future(service.ready("demo", 0.05))
        late = asyncio.ensure_future(service.ready("demo", 60))
        assert await early is None
        assert not late.done()
        service.touch("demo")  # no source here yet: nothing starts
        service.source_started("demo", {"video": "H264", "audio": "opus"})
        found = service.stream("demo")
        assert found is not None
        found[1].add_part(0, b"part", 0.25, True, True, time.time())
        async with asyncio.timeout(5):
            assert await late == found
    finally:
        await service.stop()


async def test_a_playlist_is_rendered_once_per_change_and_the_cache_is_bounded() -> None:
    window = LiveWindow(4, 1.0)
    window.add_init(0, b"init")
    window.add_part(0, b"part0", 0.25, True, True, 1_700_000_000.0)
    first = playlist_bytes("0a1b2c3d", window, 0.25)
    assert first is playlist_bytes("0a1b2c3d", window, 0.25)  # the same bytes for every waiting player
    assert first == media_playlist("0a1b2c3d", window, 0.25).encode()
    delta = playlist_bytes("0a1b2c3d", window, 0.25, skip=True)
    assert delta == media_playlist("0a1b2c3d", window, 0.25, skip=True).encode()

    window.add_part(0, b"part1", 0.25, False, False, 1_700_000_000.25)  # a change: rendered anew
    second = playlist_bytes("0a1b2c3d", window, 0.25)
    assert second != first and b"part-0a1b2c3d-1.m4s" in second
    assert second == media_playlist("0a1b2c3d", window, 0.25).encode()

    for n in range(CACHED_PLAYLISTS * 2):  # a private room: one query per viewer token
        query = f"?token=t{n}"
        assert playlist_bytes("0a1b2c3d", window, 0.25, query=query) == \
            media_playlist("0a1b2c3d", window, 0.25, query=query).encode()
    assert len(window.playlists) == CACHED_PLAYLISTS
