"""ICE restart over PATCH (RFC 9725 section 4.4): a new ICE path under the same DTLS/SRTP session."""

from __future__ import annotations

import asyncio
import re

import pytest
from media_peers import Publisher, Viewer, ice_path, restart_ice

from engine.media.config import MediaConfig

H264_OPUS = {"video": "H264", "audio": "opus"}
SDPFRAG = "application/trickle-ice-sdpfrag"


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def ufrag_of(sdp: str) -> str:
    return re.search(r"^a=ice-ufrag:(\S+)", sdp, re.M).group(1)


def candidate_ports(sdp: str) -> set[int]:
    return {int(m.split()[5]) for m in re.findall(r"^a=candidate:(.+)$", sdp, re.M)}


async def frames_in(viewers: list[Viewer], seconds: float) -> list[int]:
    before = [v.log.count("video") for v in viewers]
    await asyncio.sleep(seconds)
    return [v.log.count("video") - b for v, b in zip(viewers, before, strict=True)]


async def test_publisher_restarts_ice_and_viewers_keep_receiving(relay, h264, opus):
    publisher = Publisher(h264, opus)
    created = await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    assert created.status == 201
    answer = await created.text()
    resource = relay.base + created.headers["Location"]
    viewers = [Viewer(), Viewer()]
    for viewer in viewers:
        assert (await viewer.whep(relay.http, relay.base, "shop")).status == 201
    await wait_for(lambda: all(v.log.count("video") >= 15 for v in viewers))
    old_path = ice_path(publisher.pc)

    response = await restart_ice(publisher.pc, relay.http, resource, created.headers["ETag"])
    assert response.status == 200
    assert response.headers["Content-Type"] == SDPFRAG
    assert response.headers["ETag"] != created.headers["ETag"]
    fragment = await response.text()
    assert ufrag_of(fragment) != ufrag_of(answer)
    assert candidate_ports(fragment).isdisjoint(candidate_ports(answer)), "the server gathers new sockets"
    new_path = ice_path(publisher.pc)
    assert new_path[0] != old_path[0] and new_path[1] != old_path[1]

    # the publisher's previous sockets are closed: every frame from now on took the new path
    await wait_for(lambda: all(v.log.count("video") >= 30 for v in viewers))
    delivered = await frames_in(viewers, 1.5)
    assert all(n >= 25 for n in delivered), delivered  # 30 frames/s sent
    assert "media.offline" not in relay.events.types()
    assert publisher.pc.connectionState == "connected"

    # the new ETag governs the session now; trickle goes on with the new ufrag
    ufrag = publisher.pc.getTransceivers()[0].receiver.transport.transport.iceGatherer.getLocalParameters()
    candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"
    trickle = f"a=ice-ufrag:{ufrag.usernameFragment}\r\na=mid:0\r\n{candidate}\r\n"
    headers = {"Content-Type": SDPFRAG, "If-Match": created.headers["ETag"]}
    assert (await relay.http.patch(resource, data=trickle, headers=headers)).status == 412
    headers["If-Match"] = response.headers["ETag"]
    assert (await relay.http.patch(resource, data=trickle, headers=headers)).status == 204
    assert (await relay.http.delete(resource)).status == 200
    for peer in (*viewers, publisher):
        await peer.close()


@pytest.fixture
def media_config(forwarding: str) -> MediaConfig:
    """A short ICE deadline, so a restart that never connects is given up within the test."""
    return MediaConfig(announced_addresses=("127.0.0.1",), forwarding=forwarding, connect_timeout=2.0)


async def test_restart_that_never_connects_leaves_the_session_on_its_path(relay, h264, opus):
    publisher = Publisher(h264, opus)
    created = await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    resource = relay.base + created.headers["Location"]
    viewer = Viewer()
    assert (await viewer.whep(relay.http, relay.base, "shop")).status == 201
    await wait_for(lambda: viewer.log.count("video") >= 15)
    path = ice_path(publisher.pc)

    # new credentials from a "client" that never runs the checks (its network is gone)
    fragment = "a=ice-ufrag:gone\r\na=ice-pwd:" + "p" * 22 + "\r\na=end-of-candidates\r\n"
    headers = {"Content-Type": SDPFRAG, "If-Match": "*"}
    response = await relay.http.patch(resource, data=fragment, headers=headers)
    assert response.status == 200
    assert (await frames_in([viewer], 1.0))[0] >= 15, "media flows on the previous path while the restart runs"
    await asyncio.sleep(1.5)  # past the 2 s deadline: the restart is given up
    assert (await frames_in([viewer], 1.0))[0] >= 15, "and after it is given up"
    assert ice_path(publisher.pc) == path
    assert "media.offline" not in relay.events.types()
    await viewer.close()
    await publisher.close()


async def test_restart_accepts_the_etag_sent_as_etag_instead_of_if_match(relay, h264, opus):
    """Some WHIP clients (Eyevinn's) send the ETag they were given back as ``ETag``, not ``If-Match``."""
    publisher = Publisher(h264, opus)
    created = await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    resource = relay.base + created.headers["Location"]
    fragment = "a=ice-ufrag:next\r\na=ice-pwd:" + "p" * 22 + "\r\na=end-of-candidates\r\n"
    response = await relay.http.patch(resource, data=fragment, headers={"Content-Type": SDPFRAG})
    assert response.status == 428
    response = await relay.http.patch(resource, data=fragment, headers={"Content-Type": SDPFRAG, "ETag": '"stale"'})
    assert response.status == 412
    response = await relay.http.patch(
        resource, data=fragment, headers={"Content-Type": SDPFRAG, "ETag": created.headers["ETag"]})
    assert response.status == 200
    await publisher.close()


async def test_viewer_restarts_ice_over_whep(relay, forwarding, h264, opus):
    """A WHEP viewer's restart: aiortc's stock sender writes through the restarted ICE transport; the
    fast path re-reads the viewer's new ICE pair and sends there."""
    publisher = Publisher(h264, opus)
    await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    viewer = Viewer()
    created = await viewer.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: viewer.log.count("video") >= 15)
    old_path = ice_path(viewer.pc)
    url = relay.base + created.headers["Location"]
    response = await restart_ice(viewer.pc, relay.http, url, created.headers["ETag"])
    assert response.status == 200
    assert ice_path(viewer.pc)[0] != old_path[0]
    assert (await frames_in([viewer], 1.5))[0] >= 25
    await viewer.close()
    await publisher.close()
