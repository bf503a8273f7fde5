"""Viewer sessions that never connect: a deadline, their own small caps, and a reserve for publishers."""

from __future__ import annotations

import asyncio

import pytest
from media_peers import Publisher, Viewer, post_offer
from sdp_edits import with_candidates

from engine.media.config import MediaConfig

H264_OPUS = {"video": "H264", "audio": "opus"}


async def half_open_offer() -> str:
    """A real viewer offer with no candidates and no end-of-candidates: ICE waits for a trickle that never comes."""
    viewer = Viewer()
    sdp = with_candidates(await viewer.offer(), [], end=False)
    await viewer.close()
    return sdp


async def wait_connected(viewer: Viewer, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while viewer.pc.connectionState != "connected":
            await asyncio.sleep(0.05)


@pytest.fixture
def media_config(forwarding: str) -> MediaConfig:
    return MediaConfig(
        announced_addresses=("127.0.0.1",),
        forwarding=forwarding,
        connect_timeout=2.0,
        max_connecting_per_room=3,
        max_connecting=5,
        max_peers=40,
        publisher_reserve=2,
    )


async def test_half_open_viewers_cannot_fill_a_room_and_expire(relay):
    url = f"{relay.base}/whep/shop"
    statuses = [(await post_offer(relay.http, url, await half_open_offer())).status for _ in range(10)]
    assert statuses == [201] * 3 + [503] * 7, statuses
    refused = await post_offer(relay.http, url, await half_open_offer())
    body = await refused.json()
    assert body["error"]["code"] == "overloaded" and "connecting" in body["error"]["message"]
    assert refused.headers["Retry-After"]

    # another room still takes viewers, up to the node's connecting cap
    other = [(await post_offer(relay.http, f"{relay.base}/whep/other", await half_open_offer())).status
             for _ in range(3)]
    assert other == [201, 201, 503], other
    assert relay.media.peer_count == 5

    # the connect deadline applies to viewers as it does to publishers
    async with asyncio.timeout(relay.media.config.connect_timeout + 10):
        while relay.media.peer_count:
            await asyncio.sleep(0.1)

    # a real viewer now connects, and once connected it no longer counts as connecting
    viewers = [Viewer() for _ in range(4)]
    for viewer in viewers[:3]:
        assert (await viewer.whep(relay.http, relay.base, "shop")).status == 201
    for viewer in viewers[:3]:
        await wait_connected(viewer)
    assert (await viewers[3].whep(relay.http, relay.base, "shop")).status == 201
    await wait_connected(viewers[3])
    await asyncio.sleep(relay.media.config.connect_timeout + 0.5)
    assert relay.media.peer_count == 4  # connected viewers outlive the deadline
    for viewer in viewers:
        await viewer.close()


RESERVE = MediaConfig(
    announced_addresses=("127.0.0.1",),
    connect_timeout=30.0,
    max_connecting_per_room=100,
    max_connecting=100,
    max_peers=8,
    publisher_reserve=2,
)


@pytest.mark.parametrize("media_config", [RESERVE])
async def test_viewers_never_take_the_publishers_reserve(relay, h264, opus):
    url = f"{relay.base}/whep/other"
    statuses = [(await post_offer(relay.http, url, await half_open_offer())).status for _ in range(8)]
    assert statuses == [201] * 6 + [503] * 2, statuses
    publisher = Publisher(h264, opus)
    response = await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    assert response.status == 201
    await publisher.close()


async def _storm(relay, offers: list[tuple[str, str, str | None]]) -> list[int]:
    """POST every (endpoint, sdp, key) at once; the statuses in order."""
    posts = (post_offer(relay.http, f"{relay.base}{url}", sdp, key) for url, sdp, key in offers)
    responses = await asyncio.gather(*posts)
    return [response.status for response in responses]


@pytest.mark.parametrize(
    "media_config",
    [MediaConfig(announced_addresses=("127.0.0.1",), connect_timeout=30.0, max_connecting_per_room=20,
                 max_connecting=30, max_viewers_per_room=500)],
)
async def test_simultaneous_viewers_cannot_pass_the_connecting_caps(relay):
    sdp = await half_open_offer()
    statuses = await _storm(relay, [("/whep/shop", sdp, None)] * 50)
    assert sorted(statuses) == [201] * 20 + [503] * 30, statuses
    statuses = await _storm(relay, [("/whep/other", sdp, None)] * 30)  # the node's cap: 10 more
    assert sorted(statuses) == [201] * 10 + [503] * 20, statuses
    assert relay.media.peer_count == 30


@pytest.mark.parametrize(
    "media_config",
    [MediaConfig(announced_addresses=("127.0.0.1",), connect_timeout=30.0, max_connecting_per_room=100,
                 max_connecting=100, max_viewers_per_room=12)],
)
async def test_simultaneous_viewers_cannot_pass_the_room_cap(relay):
    statuses = await _storm(relay, [("/whep/shop", await half_open_offer(), None)] * 40)
    assert sorted(statuses) == [201] * 12 + [503] * 28, statuses


@pytest.mark.parametrize(
    "media_config",
    [MediaConfig(announced_addresses=("127.0.0.1",), connect_timeout=30.0, max_connecting_per_room=100,
                 max_connecting=100, max_peers=10, publisher_reserve=0)],
)
async def test_simultaneous_publishers_and_viewers_cannot_pass_the_node_cap(relay, h264, opus):
    publishers = [Publisher(h264, opus), Publisher(h264, opus)]
    offers = [("/whip/shop", await publishers[0].prepare(H264_OPUS), relay.key("shop")),
              ("/whip/other", await publishers[1].prepare(H264_OPUS), relay.key("other"))]
    offers += [("/whep/shop", await half_open_offer(), None)] * 30
    statuses = await _storm(relay, offers)
    assert statuses.count(201) == 10 and statuses.count(503) == 22, statuses
    assert relay.media.peer_count == 10
    for publisher in publishers:
        await publisher.close()


@pytest.mark.parametrize(
    "media_config",
    [MediaConfig(announced_addresses=("127.0.0.1",), max_peers=1, publisher_reserve=0)],
)
async def test_refused_offers_leave_no_media_room_behind(relay, h264, opus):
    assert (await post_offer(relay.http, f"{relay.base}/whep/shop", await half_open_offer())).status == 201
    assert (await post_offer(relay.http, f"{relay.base}/whep/other", await half_open_offer())).status == 503
    assert relay.media.room("other") is None
    publisher = Publisher(h264, opus)
    response = await post_offer(relay.http, f"{relay.base}/whip/other", await publisher.prepare(H264_OPUS),
                                relay.key("other"))
    assert response.status == 503
    assert relay.media.room("other") is None
    await publisher.close()
