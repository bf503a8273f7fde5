"""A room whose publisher changes: codecs that viewers can take, a crashed publisher, a fast answer.

Real aiortc publishers and viewers over WHIP/WHEP on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiortc.sdp import SessionDescription
from conftest import relay_for
from media_peers import Publisher, Viewer, post_offer
from test_relay import H264_OPUS, VP8_OPUS, close_all, metric, wait_for

from engine.media.config import MediaConfig


def answered_video_codec(sdp: str) -> str:
    video = next(m for m in SessionDescription.parse(sdp).media if m.kind == "video")
    return video.rtp.codecs[0].name


async def test_publisher_offering_both_codecs_is_answered_with_the_waiting_viewers_codec(relay, h264, opus):
    """A browser offers VP8 first and H264 too; a viewer that negotiated H264 before is already waiting."""
    player = Viewer(decode=True)
    response = await player.whep(relay.http, relay.base, "shop")
    assert response.status == 201
    assert answered_video_codec(await response.text()) == "H264"  # the empty room's first choice

    publisher = Publisher(h264, opus, also_offer=("VP8",))
    response = await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    assert response.status == 201, await response.text()
    assert answered_video_codec(await response.text()) == "H264"
    await asyncio.wait_for(player.first_decoded.wait(), 10)
    await wait_for(lambda: len(player.decoded) >= 10)
    assert player.decoded[-1].width == 320
    await close_all(player, publisher)


async def test_viewer_of_a_replaced_vp8_publisher_gets_no_h264_and_offers_again(relay, vp8, h264, opus):
    first = Publisher(vp8, opus)
    assert (await first.publish(relay.http, relay.base, "shop", relay.key("shop"), VP8_OPUS)).status == 201
    viewer = Viewer()
    response = await viewer.whep(relay.http, relay.base, "shop")
    resource = relay.base + response.headers["Location"]
    await wait_for(lambda: viewer.log.count("video") >= 10)
    assert viewer.log.codecs["video"] == "VP8"
    assert (await relay.http.delete(relay.base + first.location)).status == 200
    await first.close()

    second = Publisher(h264, opus)  # an H264-only publisher (OBS) replaces it
    assert (await second.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)).status == 201
    # the VP8 viewer's session is ended at once (its WHEP resource is gone), so it is never sent H264
    await wait_for(lambda: viewer.pc.connectionState in ("closed", "failed") or not relay.media.room("shop").viewers)
    async with relay.http.patch(
        resource, data="", headers={"Content-Type": "application/trickle-ice-sdpfrag"}
    ) as gone:
        assert gone.status == 404
    seen = viewer.log.count("video")
    frames_in = metric("livecart_media_frames_in_total", room="shop", kind="video")
    await wait_for(lambda: metric("livecart_media_frames_in_total", room="shop", kind="video") >= frames_in + 30)
    assert viewer.log.count("video") == seen, "a viewer that negotiated VP8 was sent H264"
    await viewer.close()

    again = Viewer(decode=True)  # the player posts a new offer and gets the new codec
    response = await again.whep(relay.http, relay.base, "shop")
    assert response.status == 201
    assert answered_video_codec(await response.text()) == "H264"
    await asyncio.wait_for(again.first_decoded.wait(), 10)
    await close_all(again, second)


async def test_silent_publisher_goes_offline_and_a_new_post_takes_over(relay, h264, opus):
    first = Publisher(h264, opus)
    assert (await first.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)).status == 201
    viewer = Viewer(decode=True)
    await viewer.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: len(viewer.decoded) >= 10)

    # while the first publisher sends media, the room stays taken
    second = Publisher(h264, opus)
    refused = await second.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    assert refused.status == 409
    assert (await refused.json())["error"]["code"] == "conflict"
    await second.close()

    for track in first.tracks:  # the host's browser freezes: no more media, no DELETE
        track.pause()
    stopped = time.monotonic()
    idle = relay.media.config.publisher_idle
    await wait_for(lambda: "media.offline" in relay.events.types(), timeout=idle + 3)
    assert time.monotonic() - stopped < idle + 2
    offline = next(e for e in relay.events.events if e.type == "media.offline")
    assert offline.data["reason"] == "publisher_idle"
    assert first.pc.connectionState == "connected"  # ICE consent alone would keep it for 30 s

    takeover = Publisher(h264, opus)
    response = await takeover.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    assert response.status == 201, await response.text()
    decoded = len(viewer.decoded)
    await wait_for(lambda: len(viewer.decoded) >= decoded + 20)
    await wait_for(lambda: relay.events.types().count("media.online") == 2)
    await wait_for(lambda: first.pc.connectionState in ("closed", "failed"))
    await close_all(viewer, first, takeover)


async def test_paused_publisher_that_resumes_is_live_again(relay, h264, opus):
    publisher = Publisher(h264, opus)
    assert (await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)).status == 201
    await wait_for(lambda: "media.online" in relay.events.types())
    for track in publisher.tracks:
        track.pause()
    await wait_for(lambda: "media.offline" in relay.events.types(), timeout=10)
    for track in publisher.tracks:
        track.flowing.set()
    await wait_for(lambda: relay.events.types().count("media.online") == 2)
    await publisher.close()


@pytest.fixture
def silent_stun() -> socket.socket:
    """A loopback UDP port that reads STUN requests and never answers them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


async def test_unreachable_stun_server_does_not_delay_answers(silent_stun, tmp_path, h264, opus):
    port = silent_stun.getsockname()[1]
    config = MediaConfig(announced_addresses=("127.0.0.1",), ice_servers=(f"stun:127.0.0.1:{port}",))
    async with relay_for(config, tmp_path) as relay:
        publisher = Publisher(h264, opus)
        sdp = await publisher.prepare(H264_OPUS)
        started = time.monotonic()
        response = await post_offer(relay.http, f"{relay.base}/whip/shop", sdp, relay.key("shop"))
        publish_took = time.monotonic() - started
        assert response.status == 201
        answer = await response.text()
        viewer = Viewer()
        started = time.monotonic()
        viewed = await post_offer(relay.http, f"{relay.base}/whep/shop", await viewer.offer())
        view_took = time.monotonic() - started
        assert viewed.status == 201
        # aioice waits 5 s for an unreachable STUN server; answering must not wait for it at all
        assert publish_took < 2 and view_took < 2, (publish_took, view_took)
        assert "typ host" in answer and "typ srflx" not in answer
        assert response.headers.getall("Link") == [f'<stun:127.0.0.1:{port}>; rel="ice-server"']
        await close_all(viewer, publisher)
