"""The media cascade through real `livecart serve` nodes on one Redis, and real peer connections.

A publisher imitating OBS (one complete offer without trickle, H264 on PT 96 and Opus on PT 111,
PLI ignored) publishes on one node; viewers POST WHEP to another, which pulls the room from the
first over WHEP with a node credential and fans it out. Every assertion on media is on frames the
viewers received (and, for one player, decoded).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import websockets
from cascade_nodes import SECRET, MediaNode, ready, start_node, stop_nodes, until
from media_peers import Publisher, Viewer, post_offer

from engine.media import aiortc_compat
from engine.nodes.credential import NodeCredentials
from tests.conftest import Client, RedisTarget

H264_OPUS = {"video": "H264", "audio": "opus"}


async def cluster(tmp_path: Path, redis: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
                  *names: str, extra: dict[str, tuple[str, ...]] | None = None) -> list[MediaNode]:
    """Start ``names`` as nodes, wait until they see each other."""
    started = [start_node(tmp_path / name, name, redis, *(extra or {}).get(name, ())) for name in names]
    nodes.extend(started)
    await ready(http, *started)
    return started


async def create_room(http: aiohttp.ClientSession, first: MediaNode, *others: MediaNode, room: str = "show") -> str:
    """A room created through ``first`` (its stream key), once every other node knows it."""
    created = await first.ok(http, "POST", "/api/rooms", {"id": room})
    for node in others:
        await until(lambda node=node: node.call(http, "GET", f"/api/rooms/{room}"), lambda answer: answer[0] == 200)
    return created["stream_key"]


async def publish(http: aiohttp.ClientSession, node: MediaNode, key: str, h264: Any, opus: Any,
                  room: str = "show") -> Publisher:
    publisher = Publisher(h264, opus, obs_offer=True)
    response = await publisher.publish(http, node.http, room, key, H264_OPUS)
    assert response.status == 201, await response.text()
    return publisher


async def watch(http: aiohttp.ClientSession, node: MediaNode, room: str = "show", **kwargs: Any) -> tuple[Viewer, str]:
    """A viewer that POSTed WHEP to ``node``; its session's URL."""
    viewer = Viewer(**kwargs)
    response = await viewer.whep(http, node.http, room)
    assert response.status == 201, await response.text()
    return viewer, node.http + response.headers["Location"]


async def frames(viewer: Viewer, kind: str, at_least: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while viewer.log.count(kind) < at_least:
            await asyncio.sleep(0.05)


async def leave(http: aiohttp.ClientSession, viewer: Viewer, location: str) -> None:
    async with http.delete(location) as response:
        assert response.status == 200
    await viewer.close()


async def test_viewers_on_an_edge_share_one_pull_of_the_origin(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    origin, edge = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b")
    key = await create_room(http, origin, edge)
    publisher = await publish(http, origin, key, h264, opus)

    # several first viewers at once on the edge: one lookup, one pull
    watching = await asyncio.gather(*(watch(http, edge) for _ in range(3)))
    player, _ = await watch(http, edge, decode=True)
    viewers = [viewer for viewer, _ in watching]
    for viewer in viewers:
        await frames(viewer, "video", 30)
        await frames(viewer, "audio", 30)
    await asyncio.wait_for(player.first_decoded.wait(), 15)
    async with asyncio.timeout(10):
        while len(player.decoded) < 10:
            await asyncio.sleep(0.05)
    assert (player.decoded[-1].width, player.decoded[-1].height) == (320, 240)
    assert all(viewer.log.codecs == {"video": "H264", "audio": "opus"} for viewer in viewers)

    on_origin = await origin.media(http, "show")
    on_edge = await edge.media(http, "show")
    assert on_origin["role"] == "origin" and on_origin["edges"] == 1 and on_origin["viewers"] == 0
    assert on_edge["role"] == "edge" and on_edge["upstream"] == "node-a" and on_edge["viewers"] == 4
    assert on_edge["pull"]["state"] == "live"
    assert await edge.metric(http, "livecart_media_edge_pulls_opened_total", room="show") == 1
    assert await edge.metric(http, "livecart_media_edge_pull", room="show", upstream="node-a", state="live") == 1
    assert await origin.metric(http, "livecart_media_edges_served", room="show") == 1
    assert await origin.metric(http, "livecart_media_viewers", room="show") == 1  # the edge, once

    for viewer in [*viewers, player]:
        await viewer.close()
    await publisher.close()


async def test_only_a_node_credential_from_the_shared_secret_pulls_and_only_from_the_origin(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    # one viewer per room on the origin: edges pulling it do not count against that
    origin, edge = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b",
                                 extra={"node-a": ("--max-viewers-per-room", "1")})
    key = await create_room(http, origin, edge)
    await create_room(http, origin, edge, room="other")
    publisher = await publish(http, origin, key, h264, opus)

    async def pull_with(node: MediaNode, token: str) -> aiohttp.ClientResponse:
        return await post_offer(http, f"{node.http}/whep/show", await Viewer().offer(), token)

    forged = NodeCredentials("another-secret-" + "x" * 32).mint("node-z", "show")
    assert (await pull_with(origin, forged)).status == 401
    expired = NodeCredentials(SECRET).mint("node-z", "show", ttl=1, now=time.time() - 3600)
    assert (await pull_with(origin, expired)).status == 401
    assert (await pull_with(origin, forged[:-4] + "0000")).status == 401
    assert (await pull_with(origin, NodeCredentials(SECRET).mint("node-z", "other"))).status == 403
    # a valid credential, but to a node that does not hold the room's publisher: pulls never loop
    refused = await pull_with(edge, NodeCredentials(SECRET).mint("node-z", "show"))
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "not_origin"
    # a viewer token is a viewer, never an edge
    minted = await origin.ok(http, "POST", "/api/rooms/show/tokens", {"role": "viewer", "sub": "ana"})
    viewer = Viewer()
    response = await post_offer(http, f"{origin.http}/whep/show", await viewer.offer(), minted["token"])
    assert response.status == 201
    await viewer.accept(await response.text())
    await frames(viewer, "video", 10)
    assert (await origin.media(http, "show"))["edges"] == 0

    pulled = Viewer()
    response = await post_offer(http, f"{origin.http}/whep/show", await pulled.offer(),
                                NodeCredentials(SECRET).mint("node-z", "show"))
    assert response.status == 201
    await pulled.accept(await response.text())
    await frames(pulled, "video", 10)
    view = await origin.media(http, "show")
    assert view["edges"] == 1 and view["viewers"] == 1
    for peer in (viewer, pulled, publisher):
        await peer.close()


async def test_late_joiner_on_an_edge_starts_at_a_keyframe_and_keyframe_requests_go_upstream_once(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    # the origin passes every PLI on (0.05 s apart): what reaches the publisher is what the edge sent
    origin, edge = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b",
                                 extra={"node-a": ("--pli-interval", "0.05"), "node-b": ("--pli-interval", "1")})
    key = await create_room(http, origin, edge)
    publisher = await publish(http, origin, key, h264, opus)
    first, _ = await watch(http, edge)
    await frames(first, "video", 75)  # past the first keyframe interval: the stream is mid-GOP now

    late, _ = await watch(http, edge)
    await frames(late, "video", 1)
    assert late.log.frames["video"][0][2], "the late joiner's first frame is a keyframe (the edge's cache)"
    assert await origin.metric(http, "livecart_media_edges_served", room="show") == 1

    viewers = [first, late, *[viewer for viewer, _ in await asyncio.gather(*(watch(http, edge) for _ in range(2)))]]
    for viewer in viewers:
        await frames(viewer, "video", 5)
    before = publisher.keyframe_requests
    started = time.monotonic()
    asked = 0
    while time.monotonic() - started < 3.0:
        for viewer in viewers:
            asked += await aiortc_compat.request_keyframe(viewer.pc.getTransceivers()[1].receiver)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started
    reached = publisher.keyframe_requests - before
    assert asked >= 100
    # at most one PLI per second from the edge (plus one for a partial interval at each end)
    assert 1 <= reached <= elapsed + 2, (asked, reached)
    for viewer in viewers:
        await viewer.close()
    await publisher.close()


async def test_an_edge_lingers_after_its_last_viewer_then_lets_go(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    origin, edge = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b",
                                 extra={"node-b": ("--edge-linger", "2")})
    key = await create_room(http, origin, edge)
    publisher = await publish(http, origin, key, h264, opus)

    viewer, location = await watch(http, edge)
    await frames(viewer, "video", 10)
    await leave(http, viewer, location)
    # zapping back within the linger: the same pull serves the new viewer
    assert (await edge.media(http, "show"))["pull"]["state"] == "live"
    viewer, location = await watch(http, edge)
    await frames(viewer, "video", 10)
    assert await edge.metric(http, "livecart_media_edge_pulls_opened_total", room="show") == 1
    assert (await origin.media(http, "show"))["edges"] == 1

    await leave(http, viewer, location)
    left = time.monotonic()
    await until(lambda: edge.media(http, "show"), lambda view: view is None or view["pull"] is None)
    assert time.monotonic() - left >= 1.5  # held for the linger (2 s), not let go at once
    await until(lambda: origin.media(http, "show"), lambda view: view["edges"] == 0)  # DELETEd on the origin
    assert await edge.metric(http, "livecart_media_edge_pull", room="show", upstream="node-a", state="live") == 0

    viewer, _ = await watch(http, edge)  # a new viewer after the linger opens a new pull
    await frames(viewer, "video", 10)
    view = await edge.media(http, "show")
    assert view["pull"]["state"] == "live" and view["pull"]["age"] < time.monotonic() - left
    assert (await origin.media(http, "show"))["edges"] == 1
    await viewer.close()
    await publisher.close()


async def test_publisher_moving_to_another_node_reaches_edge_viewers_without_a_rejoin(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    first, second, edge = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b", "node-c")
    key = await create_room(http, first, second, edge)
    publisher = await publish(http, first, key, h264, opus)
    minted = await edge.ok(http, "POST", "/api/rooms/show/tokens", {"role": "viewer", "sub": "bo"})
    events = Client(await websockets.connect(f"ws://127.0.0.1:{edge.ws_port}/ws?token={minted['token']}",
                                             max_queue=None))
    await events.recv_type("snapshot")
    viewer, _ = await watch(http, edge)
    on_first, _ = await watch(http, first)  # a viewer of the first origin, which becomes an edge itself
    by_websocket = Viewer()  # the websocket client's own player: offer and answer over the websocket
    ack = await events.request({"type": "offer", "id": "o1", "sdp": await by_websocket.offer()}, timeout=10)
    assert ack["type"] == "ack", ack
    await by_websocket.accept(ack["sdp"])
    await frames(viewer, "video", 10)
    await frames(on_first, "video", 10)
    await frames(by_websocket, "video", 10)
    assert (await edge.media(http, "show"))["upstream"] == "node-a"

    async with http.delete(first.http + publisher.location) as response:
        assert response.status == 200
    await publisher.close()
    assert (await events.recv_type("media.offline", timeout=10))["reason"] == "publisher_left"
    seen, seen_first, seen_ws = viewer.log.count("video"), on_first.log.count("video"), by_websocket.log.count("video")

    publisher = await publish(http, second, key, h264, opus)
    moved = time.monotonic()
    online = await events.recv_type("media.online", timeout=10)
    assert online["codecs"] == H264_OPUS
    # node-c follows node-b: directly, or through node-a, which pulls node-b for its own viewer now
    view = await until(lambda: edge.media(http, "show"), lambda view: view["pull"] is not None and (
        (view["upstream"], view["depth"]) in (("node-b", 1), ("node-a", 2))))
    assert view["role"] == "edge"
    await frames(viewer, "video", seen + 30)
    await frames(on_first, "video", seen_first + 30)
    await frames(by_websocket, "video", seen_ws + 30)
    resumed = time.monotonic() - moved
    # the new origin's media starts at a keyframe, on the same peer connections; before it may come the old
    # stream's last frame from each jitter buffer on the way (an edge's receiver and the player's hand a
    # frame out when the next one begins), and node-c may reach node-b through node-a for a moment
    for log in (viewer.log, on_first.log, by_websocket.log):
        after = [keyframe for arrived, _, keyframe in log.frames["video"] if arrived > moved]
        assert any(after[:3]), after[:10]
    assert (await edge.media(http, "show"))["pull"]["state"] == "live"
    assert (await first.media(http, "show"))["role"] == "edge"
    on_second = await until(lambda: second.media(http, "show"), lambda view: view["edges"] >= 1)
    assert on_second["role"] == "origin"
    view = await edge.media(http, "show")
    assert (view["upstream"], view["depth"]) in (("node-b", 1), ("node-a", 2))
    print(f"edge viewers resumed {resumed:.2f} s after the publisher came back on another node")
    await events.close()
    for peer in (viewer, on_first, by_websocket, publisher):
        await peer.close()


async def test_a_full_node_redirects_whep_viewers_to_a_node_with_room_or_answers_503(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    # media sessions for viewers: --max-peers less --publisher-reserve (a: 3, b: 1, c: plenty)
    origin, full, roomy = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b", "node-c", extra={
        "node-a": ("--max-peers", "23", "--publisher-reserve", "20"),
        "node-b": ("--max-peers", "21", "--publisher-reserve", "20")})
    key = await create_room(http, origin, full, roomy)
    publisher = await publish(http, origin, key, h264, opus)
    first, _ = await watch(http, full)  # node-b pulls the room: its one viewer session, and one of node-a's

    async def whep(url: str) -> tuple[aiohttp.ClientResponse, Viewer]:
        viewer = Viewer()
        response = await http.post(url, data=await viewer.offer(), headers={"Content-Type": "application/sdp"},
                                   allow_redirects=False)
        await response.read()
        if response.status == 201:
            await viewer.accept(await response.text())
        return response, viewer

    async def free(node_id: str) -> int:
        nodes = (await full.ok(http, "GET", "/healthz"))["node"]["nodes"]
        return next((n["load"]["media_free"] for n in nodes if n["id"] == node_id), -1)

    await until(lambda: free("node-c"), lambda value: value > 1000)
    redirected, _ = await whep(f"{full.http}/whep/show")
    assert redirected.status == 307
    assert redirected.headers["Location"] == f"{roomy.http}/whep/show?redirected=1"
    refused, _ = await whep(f"{full.http}/whep/show?redirected=1")  # never redirected twice
    assert refused.status == 503 and int(refused.headers["Retry-After"]) > 0
    answered, second = await whep(redirected.headers["Location"])
    assert answered.status == 201
    await frames(second, "video", 10)  # node-c pulled the room from node-a for it
    assert (await origin.media(http, "show"))["edges"] == 2

    await second.close()
    stop_nodes([roomy])  # node-c leaves: its pull ends, node-a has room for one more viewer
    await until(lambda: free("node-c"), lambda value: value == -1)
    await until(lambda: free("node-a"), lambda value: value == 1)
    redirected, _ = await whep(f"{full.http}/whep/show")
    assert redirected.status == 307 and redirected.headers["Location"] == f"{origin.http}/whep/show?redirected=1"
    answered, third = await whep(redirected.headers["Location"])
    assert answered.status == 201
    await frames(third, "video", 10)

    await until(lambda: free("node-a"), lambda value: value == 0)
    refused, _ = await whep(f"{full.http}/whep/show")  # nobody has room: 503, come back later
    assert refused.status == 503 and int(refused.headers["Retry-After"]) > 0
    assert (await refused.json())["error"]["code"] == "overloaded"
    for peer in (first, third, publisher):
        await peer.close()


async def test_publisher_returning_to_the_same_origin_resumes_edge_viewers_on_the_same_pull(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    origin, edge = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b")
    key = await create_room(http, origin, edge)
    publisher = await publish(http, origin, key, h264, opus)
    viewer, _ = await watch(http, edge)
    await frames(viewer, "video", 10)
    async with http.delete(origin.http + publisher.location) as response:
        assert response.status == 200
    await publisher.close()
    await until(lambda: origin.media(http, "show"), lambda view: view["role"] == "waiting")
    seen = viewer.log.count("video")

    publisher = await publish(http, origin, key, h264, opus)
    back = time.monotonic()
    await frames(viewer, "video", seen + 30)
    # the returning publisher's media starts at a keyframe; before it may come the old stream's last frame
    # from each jitter buffer on the way (the edge's receiver and the player's hand a frame out when the next begins)
    after = [keyframe for arrived, _, keyframe in viewer.log.frames["video"] if arrived > back]
    assert any(after[:3]), after[:10]
    view = await edge.media(http, "show")
    assert view["upstream"] == "node-a" and view["pull"]["state"] == "live"
    assert await edge.metric(http, "livecart_media_edge_pulls_opened_total", room="show") == 1  # the same pull
    await viewer.close()
    await publisher.close()


async def test_after_the_origin_is_killed_edges_wait_for_the_publisher_to_return_anywhere(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    origin, edge, spare = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b", "node-c")
    key = await create_room(http, origin, edge, spare)
    publisher = await publish(http, origin, key, h264, opus)
    viewer, _ = await watch(http, edge)
    await frames(viewer, "video", 10)

    origin.proc.send_signal(signal.SIGKILL)  # no goodbye: its claim on the room lapses with its TTL (3 s)
    origin.proc.wait(10)
    await publisher.close()  # the publisher's connection died with the node; it comes back on node-c
    killed = time.monotonic()
    seen = viewer.log.count("video")
    async with asyncio.timeout(15):
        while True:  # as OBS does: retry until the room's publisher claim is free
            publisher = Publisher(h264, opus, obs_offer=True)
            response = await publisher.publish(http, spare.http, "show", key, H264_OPUS)
            if response.status == 201:
                break
            await publisher.close()
            await asyncio.sleep(0.5)
    await until(lambda: edge.media(http, "show"), lambda view: view["upstream"] == "node-c")
    await frames(viewer, "video", seen + 30)  # the same peer connection plays again
    print(f"edge viewer played again {time.monotonic() - killed:.2f} s after its origin was killed")
    assert (await spare.media(http, "show"))["edges"] == 1
    await viewer.close()
    await publisher.close()


async def test_an_origin_feeding_its_maximum_of_edges_makes_a_chain_whose_last_viewers_play(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    one_edge = ("--max-edges-per-node", "1", "--max-edge-depth", "2")
    origin, middle, last = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b", "node-c",
                                         extra={name: one_edge for name in ("node-a", "node-b", "node-c")})
    key = await create_room(http, origin, middle, last)
    publisher = await publish(http, origin, key, h264, opus)
    first, _ = await watch(http, middle)
    await frames(first, "video", 10)

    async def relays_seen_by_last() -> list[dict[str, Any]]:
        listed = (await last.ok(http, "GET", "/healthz"))["node"]["nodes"]
        return next(n["relays"] for n in listed if n["id"] == "node-b")

    assert await until(relays_seen_by_last, bool) == [{"room": "show", "upstream": "node-a", "depth": 1}]
    viewer, _ = await watch(http, last, decode=True)  # node-a feeds its one edge: node-c pulls from node-b
    await asyncio.wait_for(viewer.first_decoded.wait(), 15)
    async with asyncio.timeout(10):
        while len(viewer.decoded) < 10:
            await asyncio.sleep(0.05)
    assert (viewer.decoded[-1].width, viewer.decoded[-1].height) == (320, 240)
    view = await last.media(http, "show")
    assert view["role"] == "edge" and view["upstream"] == "node-b" and view["depth"] == 2
    assert (await origin.media(http, "show"))["edges"] == 1
    assert (await middle.media(http, "show"))["edges"] == 1

    # a fourth node would be past the depth bound (2): the last edge refuses it, the others are full
    for node, status, code in ((origin, 503, "edges_full"), (middle, 503, "edges_full"), (last, 409, "not_origin")):
        probe = Viewer()
        response = await post_offer(http, f"{node.http}/whep/show", await probe.offer(),
                                    NodeCredentials(SECRET).mint("node-z", "show"))
        assert (response.status, (await response.json())["error"]["code"]) == (status, code)
        await probe.close()
    for peer in (first, viewer, publisher):
        await peer.close()


async def test_viewers_of_a_killed_edge_play_again_from_another_node(
        tmp_path: Path, redis_target: RedisTarget, nodes: list[MediaNode], http: aiohttp.ClientSession,
        h264: Any, opus: Any) -> None:
    origin, edge, other = await cluster(tmp_path, redis_target, nodes, http, "node-a", "node-b", "node-c")
    key = await create_room(http, origin, edge, other)
    publisher = await publish(http, origin, key, h264, opus)
    viewer, _ = await watch(http, edge)
    await frames(viewer, "video", 10)
    edge.proc.send_signal(signal.SIGKILL)
    edge.proc.wait(10)
    await viewer.close()
    again, _ = await watch(http, other)  # as the watch page does: offer again, to another node
    await frames(again, "video", 30)
    assert (await other.media(http, "show"))["upstream"] == "node-a"
    # the origin still counts the dead edge's session until ICE consent lapses, and feeds the new one
    assert (await origin.media(http, "show"))["edges"] >= 1
    await again.close()
    await publisher.close()
