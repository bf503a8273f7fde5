"""Every WHIP/WHEP status: 201, 401, 404, 409, 400, 415, 422, 503, 412, 428, OPTIONS, PATCH, DELETE."""

from __future__ import annotations

import dataclasses

import pytest
from media_peers import Publisher, Viewer, post_offer

from engine.media.config import MediaConfig

H264_OPUS = {"video": "H264", "audio": "opus"}


async def error_of(response) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["error"]["code"]


async def test_whip_refusals(relay, h264, opus):
    publisher = Publisher(h264, opus)
    sdp = await publisher.prepare(H264_OPUS)
    url = f"{relay.base}/whip/shop"
    assert await error_of(await post_offer(relay.http, url, sdp, "wrong")) == (401, "unauthorized")
    assert await error_of(await post_offer(relay.http, url, sdp)) == (401, "unauthorized")
    nowhere = await post_offer(relay.http, f"{relay.base}/whip/nowhere", sdp, "x")
    assert await error_of(nowhere) == (404, "not_found")
    bad = await post_offer(relay.http, url, "hello", relay.key("shop"))
    assert await error_of(bad) == (400, "bad_request")
    no_ice = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=ice-"))
    assert await error_of(await post_offer(relay.http, url, no_ice, relay.key("shop"))) == (
        400,
        "bad_request",
    )
    av1_only = sdp.replace("H264/90000", "AV1/90000")
    status, code = await error_of(await post_offer(relay.http, url, av1_only, relay.key("shop")))
    assert (status, code) == (422, "unsupported_codec")
    wrong_type = await relay.http.post(url, data=sdp, headers={"Content-Type": "text/plain"})
    assert wrong_type.status == 415

    created = await post_offer(relay.http, url, sdp, relay.key("shop"))
    assert created.status == 201
    assert created.headers["Content-Type"] == "application/sdp"
    assert created.headers["ETag"].startswith('"')
    second = await Publisher(h264, opus).prepare(H264_OPUS)
    assert await error_of(await post_offer(relay.http, url, second, relay.key("shop"))) == (409, "conflict")
    await publisher.close()


async def test_unsupported_track_mix(relay, h264, opus):
    publisher = Publisher(h264, h264, opus)
    sdp = await publisher.prepare(H264_OPUS)
    response = await post_offer(relay.http, f"{relay.base}/whip/shop", sdp, relay.key("shop"))
    assert await error_of(response) == (422, "unsupported_media")
    await publisher.close()


async def test_viewer_that_cannot_receive_the_codec_is_told_which(relay, h264, opus):
    publisher = Publisher(h264, opus)
    await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    viewer = Viewer()
    video = [t for t in viewer.pc.getTransceivers() if t.kind == "video"][0]
    video.setCodecPreferences([c for c in video.receiver.getCapabilities("video").codecs if c.name == "VP8"])
    response = await post_offer(relay.http, f"{relay.base}/whep/shop", await viewer.offer())
    assert response.status == 422
    body = await response.json()
    assert body["error"]["code"] == "unsupported_codec"
    assert "H264" in body["error"]["message"] and "VP8" in body["error"]["message"]
    await viewer.close()
    await publisher.close()


@pytest.fixture
def media_config() -> MediaConfig:
    return dataclasses.replace(
        MediaConfig(announced_addresses=("127.0.0.1",)), max_viewers_per_room=1, retry_after=7
    )


async def test_overload_answers_503_with_retry_after(relay):
    first, second = Viewer(), Viewer()
    assert (await first.whep(relay.http, relay.base, "shop")).status == 201
    response = await post_offer(relay.http, f"{relay.base}/whep/shop", await second.offer())
    assert await error_of(response) == (503, "overloaded")
    assert response.headers["Retry-After"] == "7"
    await first.close()
    await second.close()


async def test_options_patch_delete(relay, h264, opus):
    options = await relay.http.options(f"{relay.base}/whip/shop")
    assert options.status == 204
    assert options.headers["Accept-Post"] == "application/sdp"
    assert options.headers["Access-Control-Allow-Origin"] == "*"

    publisher = Publisher(h264, opus)
    response = await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    resource = relay.base + response.headers["Location"]
    etag = response.headers["ETag"]
    assert "PATCH" in (await relay.http.options(resource)).headers["Allow"]
    frag = "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{}"
    ufrag = publisher.pc.localDescription.sdp.split("a=ice-ufrag:")[1].split("\r\n")[0]
    pwd = publisher.pc.localDescription.sdp.split("a=ice-pwd:")[1].split("\r\n")[0]
    candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
    headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag}
    trickle = await relay.http.patch(resource, data=frag.format(ufrag, pwd, candidate), headers=headers)
    assert trickle.status == 204
    stale = await relay.http.patch(
        resource, data=frag.format(ufrag, pwd, candidate), headers={**headers, "If-Match": '"stale"'}
    )
    assert await error_of(stale) == (412, "precondition_failed")
    restart_frag = frag.format("newu", "n" * 22, candidate)
    unconditional = await relay.http.patch(
        resource, data=restart_frag, headers={"Content-Type": headers["Content-Type"]}
    )
    assert await error_of(unconditional) == (428, "precondition_required")
    no_pwd = await relay.http.patch(resource, data="a=ice-ufrag:newu\r\n", headers={**headers, "If-Match": "*"})
    assert await error_of(no_pwd) == (400, "bad_request")
    # an ICE restart that never connects (no peer behind it): answered, and the session stays on its path
    restart = await relay.http.patch(resource, data=restart_frag, headers={**headers, "If-Match": "*"})
    assert restart.status == 200
    assert restart.headers["Content-Type"] == "application/trickle-ice-sdpfrag"
    assert restart.headers["ETag"] != etag
    assert "a=ice-ufrag:" in await restart.text()
    stale_after_restart = await relay.http.patch(resource, data=frag.format("newu", "n" * 22, ""), headers=headers)
    assert await error_of(stale_after_restart) == (412, "precondition_failed")
    wrong = await relay.http.patch(resource, data="x", headers={"Content-Type": "text/plain"})
    assert wrong.status == 415
    assert (await relay.http.delete(resource)).status == 200
    assert (await relay.http.delete(resource)).status == 200  # a recently ended session: already done
    assert await error_of(await relay.http.delete(resource + "x")) == (404, "not_found")
    await publisher.close()


@pytest.mark.parametrize("media_config", [MediaConfig(ice_servers=("stun:127.0.0.1:3478",))])
async def test_ice_servers_are_advertised(relay):
    options = await relay.http.options(f"{relay.base}/whep/shop")
    assert options.headers.getall("Link") == ['<stun:127.0.0.1:3478>; rel="ice-server"']
