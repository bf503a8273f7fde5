"""A node records in the registry which rooms' publishers it holds, as a WHIP publisher comes and goes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from redis.asyncio import Redis

from engine.app import App
from engine.config import Config
from engine.media import aiortc_compat
from tests.conftest import RedisTarget


@pytest.fixture
async def node(config: Config, redis_target: RedisTarget) -> AsyncIterator[App]:
    app = App(config.replace(redis_url=redis_target.url, redis_prefix=redis_target.prefix, node_id="node-a",
                             node_heartbeat=0.2, node_ttl=1.0))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_a_publisher_is_claimed_while_it_publishes_and_released_when_it_leaves(
        node: App, redis_target: RedisTarget) -> None:
    claim_key = f"{redis_target.prefix}room:{{demo}}:publisher"
    base = f"http://127.0.0.1:{node.http_port}"
    redis = Redis.from_url(redis_target.url)
    pc = RTCPeerConnection()
    try:
        assert await redis.get(claim_key) is None
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        aiortc_compat.bind_ice(pc, ("127.0.0.1",))
        await pc.setLocalDescription(await pc.createOffer())
        stream_key = node.rooms.get("demo").stream_key
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/whip/demo", data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp",
                                          "Authorization": f"Bearer {stream_key}"}) as response:
                assert response.status == 201, await response.text()
                location = response.headers["Location"]
                await pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))

            async def claimed() -> bool:
                return await redis.get(claim_key) == b"node-a"

            await until(claimed)
            await asyncio.sleep(1.5)  # past the node TTL: the heartbeats keep the claim
            assert await redis.get(claim_key) == b"node-a"
            async with http.get(f"{base}/healthz") as response:
                view = (await response.json())["node"]
            assert view["publishers"] == ["demo"] and view["nodes"][0]["publishers"] == ["demo"]

            async with http.delete(base + location, headers={"Authorization": f"Bearer {stream_key}"}) as response:
                assert response.status == 200

            async def released() -> bool:
                return await redis.get(claim_key) is None

            await until(released)
            async with http.get(f"{base}/healthz") as response:
                assert (await response.json())["node"]["publishers"] == []
    finally:
        await pc.close()
        await redis.aclose()
