"""End to end through WHIP and WHEP with aiortc peers on loopback."""

from __future__ import annotations

import asyncio

from media_peers import Publisher, Viewer

H264_OPUS = {"video": "H264", "audio": "opus"}
VP8_OPUS = {"video": "VP8", "audio": "opus"}


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_h264_publisher_reaches_several_whep_viewers(relay, h264, opus):
    publisher = Publisher(h264, opus)
    response = await publisher.publish(relay.http, relay.base, "shop", "key-shop", H264_OPUS)
    assert response.status == 201, await response.text()
    viewers = [Viewer() for _ in range(3)]
    for viewer in viewers:
        assert (await viewer.whep(relay.http, relay.base, "shop")).status == 201
    await wait_for(lambda: all(v.log.count("video") >= 30 and v.log.count("audio") >= 30 for v in viewers))
    for viewer in viewers:
        assert viewer.log.frames["video"][0][2], "first video frame must be a keyframe"
        assert viewer.log.codecs == {"video": "H264", "audio": "opus"}
    assert "media.online" in relay.bus.types("shop")
    for peer in [*viewers, publisher]:
        await peer.close()
