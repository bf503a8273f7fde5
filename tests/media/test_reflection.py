"""Traffic reflection: how many STUN checks an anonymous offer can make the node send to a third party.

The "third party" is a UDP socket on 127.0.0.1 that counts what arrives and
never answers, so every connectivity check aioice sends there is retried to
its limit. Every packet stays on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from media_peers import Viewer, post_offer
from sdp_edits import mids, same_port_candidates, with_candidates

from engine.media.config import MediaConfig

SDPFRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}
#: aioice sends each connectivity check at most 7 times (a first try and 6 retransmissions).
TRANSMISSIONS = 7
CAP = 8


class Sink(asyncio.DatagramProtocol):
    """Counts STUN binding requests arriving at one loopback port."""

    def __init__(self) -> None:
        self.stun = 0
        self.port = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == b"\x00\x01":  # STUN binding request
            self.stun += 1


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    protocol.port = transport.get_extra_info("sockname")[1]
    yield protocol
    transport.close()


async def offer_naming(sink: Sink, count: int) -> str:
    viewer = Viewer()
    sdp = with_candidates(await viewer.offer(), same_port_candidates(count, sink.port))
    await viewer.close()
    return sdp


@pytest.mark.parametrize(
    "media_config",
    [MediaConfig(announced_addresses=("127.0.0.1",), max_remote_candidates=CAP, connect_timeout=3.0)],
)
async def test_checks_to_a_named_address_are_bounded(relay, sink):
    url = f"{relay.base}/whep/shop"
    for _ in range(10):
        response = await post_offer(relay.http, url, await offer_naming(sink, 200))
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "too_many_candidates"
    for _ in range(10):
        assert (await post_offer(relay.http, url, await offer_naming(sink, CAP))).status == 201
    # the sessions reach their connect deadline, and then no check leaves the node any more
    async with asyncio.timeout(15):
        while relay.media.peer_count:
            await asyncio.sleep(0.1)
    sent = sink.stun
    assert 0 < sent <= 10 * CAP * TRANSMISSIONS, sent
    await asyncio.sleep(2.0)
    assert sink.stun == sent


@pytest.mark.parametrize(
    "media_config",
    [MediaConfig(announced_addresses=("127.0.0.1",), ice_candidate_filter="loopback", connect_timeout=3.0)],
)
async def test_a_candidate_filter_refusing_loopback_sends_nothing_there(relay, sink):
    viewer = Viewer()
    sdp = with_candidates(await viewer.offer(), same_port_candidates(CAP, sink.port), end=False)
    response = await post_offer(relay.http, f"{relay.base}/whep/shop", sdp)
    assert response.status == 201
    resource = relay.base + response.headers["Location"]
    fragment = f"a=mid:{mids(sdp)[0]}\r\n" + "\r\n".join(same_port_candidates(3, sink.port)) + "\r\n"
    assert (await relay.http.patch(resource, data=fragment, headers=SDPFRAG)).status == 204
    for _ in range(4):
        assert (await post_offer(relay.http, f"{relay.base}/whep/shop", await offer_naming(sink, CAP))).status == 201
    await asyncio.sleep(2.5)
    assert sink.stun == 0
    await viewer.close()


@pytest.mark.parametrize(
    "media_config",
    [MediaConfig(announced_addresses=("127.0.0.1",), ice_candidate_filter="loopback", connect_timeout=3.0)],
)
async def test_a_candidate_behind_a_bare_carriage_return_is_refused_not_contacted(relay, sink):
    """aiortc splits lines on a bare CR as well: a candidate hidden behind one must not slip past the filter."""
    viewer = Viewer()
    hidden = "a=x-note:hidden\r" + same_port_candidates(1, sink.port)[0]
    sdp = with_candidates(await viewer.offer(), [hidden])
    await viewer.close()
    response = await post_offer(relay.http, f"{relay.base}/whep/shop", sdp)
    assert response.status == 400, await response.text()
    assert "line break" in (await response.json())["error"]["message"]
    await asyncio.sleep(2.0)
    assert sink.stun == 0
    assert relay.media.peer_count == 0
