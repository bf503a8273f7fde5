"""End to end through WHIP and WHEP with aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import time

from media_peers import Publisher, Viewer
from prometheus_client import REGISTRY

H264_OPUS = {"video": "H264", "audio": "opus"}
VP8_OPUS = {"video": "VP8", "audio": "opus"}


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def close_all(*peers) -> None:
    for peer in peers:
        await peer.close()


async def test_h264_publisher_reaches_several_whep_viewers(relay, h264, opus):
    publisher = Publisher(h264, opus)
    response = await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    assert response.status == 201, await response.text()
    viewers = [Viewer() for _ in range(3)]
    for viewer in viewers:
        assert (await viewer.whep(relay.http, relay.base, "shop")).status == 201
    await wait_for(lambda: all(v.log.count("video") >= 30 and v.log.count("audio") >= 30 for v in viewers))
    for viewer in viewers:
        assert viewer.log.frames["video"][0][2], "first video frame must be a keyframe"
        assert viewer.log.codecs == {"video": "H264", "audio": "opus"}
    assert "media.online" in relay.events.types()
    assert metric("livecart_media_viewers", room="shop") == 3
    assert metric("livecart_media_frames_out_total", room="shop", kind="video") >= 90
    assert metric("livecart_media_join_to_first_frame_seconds_count", room="shop") == 3
    await close_all(*viewers, publisher)


async def test_vp8_with_opus_is_decodable_by_viewers(relay, vp8, opus):
    publisher = Publisher(vp8, opus)
    assert (
        await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), VP8_OPUS)
    ).status == 201
    player, reader = Viewer(decode=True), Viewer()
    for viewer in (player, reader):
        assert (await viewer.whep(relay.http, relay.base, "shop")).status == 201
    await wait_for(lambda: len(player.decoded) >= 20 and reader.log.count("audio") >= 20)
    assert (player.decoded[-1].width, player.decoded[-1].height) == (320, 240)
    assert reader.log.codecs["video"] == "VP8"
    await close_all(player, reader, publisher)


async def test_late_joiner_starts_at_cached_keyframe_of_a_publisher_ignoring_pli(relay, h264, opus):
    # keyframes only every 2 s and PLI ignored, like OBS
    publisher = Publisher(h264, opus)
    assert (
        await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    ).status == 201
    first = Viewer()
    await first.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: first.log.count("video") >= 25)  # now mid-GOP
    late, player = Viewer(), Viewer(decode=True)
    started = time.monotonic()
    await late.whep(relay.http, relay.base, "shop")
    await player.whep(relay.http, relay.base, "shop")
    await asyncio.wait_for(player.first_decoded.wait(), 2.0)
    await asyncio.wait_for(late.log.arrived.wait(), 1.0)
    assert late.log.frames["video"][0][0] - started < 1.0
    assert late.log.frames["video"][0][2], "late joiner's first frame must be the cached keyframe"
    first_seen = first.log.count("video")
    await wait_for(lambda: late.log.count("video") >= 25, timeout=0.5)  # the cached group at once
    assert first.log.count("video") - first_seen < 10
    assert player.decoded[0].width == 320
    await close_all(first, late, player, publisher)


async def test_keyframe_requests_are_rate_limited_per_room(relay, h264, opus):
    publisher = Publisher(h264, opus)
    await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    viewer = Viewer()
    await viewer.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: viewer.log.count("video") >= 5)
    media = relay.media.room("shop")
    interval = relay.media.config.pli_min_interval
    await asyncio.sleep(interval)  # whatever PLI the viewer's join caused is out of the window
    for round in range(2):
        before = metric("livecart_media_keyframe_requests_total", room="shop")
        received = publisher.keyframe_requests
        for _ in range(20):
            media.request_keyframe()
        # The first request reaches the publisher as a PLI; the other 19 fall in its window.
        await wait_for(lambda received=received: publisher.keyframe_requests > received, timeout=interval)
        await asyncio.sleep(0.3)
        assert publisher.keyframe_requests == received + 1, f"round {round}"
        assert metric("livecart_media_keyframe_requests_total", room="shop") - before == 1
        await asyncio.sleep(interval)  # the window is over: the next request goes out again
    await close_all(viewer, publisher)


async def test_publisher_drop_and_return_keeps_viewers(relay, h264, h264_large, opus):
    publisher = Publisher(h264, opus)
    await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    player, reader = Viewer(decode=True), Viewer()
    for viewer in (player, reader):
        await viewer.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: len(player.decoded) >= 10)
    await publisher.close()
    await wait_for(lambda: "media.offline" in relay.events.types())
    assert player.pc.connectionState == "connected" and reader.pc.connectionState == "connected"

    seen = reader.log.count("video")
    returned = Publisher(h264_large, opus)  # new SSRCs, new resolution
    response = await returned.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    assert response.status == 201, await response.text()
    await wait_for(lambda: player.decoded and player.decoded[-1].width == 480)
    await wait_for(lambda: reader.log.count("video") >= seen + 10)
    # the viewer's own jitter buffer releases the old publisher's last frame when the next one
    # arrives, so the new publisher's frames start at seen or seen + 1, with a keyframe
    assert any(kf for _, _, kf in reader.log.frames["video"][seen : seen + 2]), "restart at a keyframe"
    assert relay.events.types().count("media.online") == 2
    await close_all(player, reader, returned)


async def test_obs_style_offer(relay, h264, opus):
    """No candidates, session-level ICE, a=group:LS, OPUS on 111, H264 on 96, no trickle."""
    publisher = Publisher(h264, opus, obs_offer=True)
    sdp = await publisher.prepare(H264_OPUS)
    assert "a=candidate" not in sdp and "OPUS/48000" in sdp and "a=group:LS" in sdp
    response = await relay.http.post(
        f"{relay.base}/whip/shop",
        data=sdp,
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {relay.key('shop')}"},
    )
    assert response.status == 201
    answer = await response.text()
    assert "a=setup:passive" in answer
    assert "a=rtpmap:111 opus/48000/2" in answer.replace("OPUS", "opus")
    assert "a=rtpmap:96 H264/90000" in answer
    from aiortc import RTCSessionDescription

    await publisher.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    viewer = Viewer()
    await viewer.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: viewer.log.count("video") >= 10 and viewer.log.count("audio") >= 10)
    delete = await relay.http.delete(relay.base + response.headers["Location"])
    assert delete.status == 200
    await wait_for(lambda: "media.offline" in relay.events.types())
    await close_all(viewer, publisher)
