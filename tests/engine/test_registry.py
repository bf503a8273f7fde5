"""The node registry contract, run unchanged against the memory and the Redis backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from engine.nodes.base import Load, NodeInfo, NodeRegistry
from engine.nodes.memory import MemoryNodeRegistry
from engine.nodes.presence import Presence
from engine.nodes.redis import RedisNodeRegistry
from tests.conftest import RedisTarget

TTL = 1.0


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest, redis_target: RedisTarget) -> AsyncIterator[NodeRegistry]:
    if request.param == "memory":
        yield MemoryNodeRegistry(TTL)
        return
    client = Redis.from_url(redis_target.url)
    try:
        yield RedisNodeRegistry(client, redis_target.prefix, TTL)
    finally:
        await client.aclose()


def node(node_id: str, *publishers: str, viewers: int = 0) -> NodeInfo:
    return NodeInfo(node_id, f"http://{node_id}.example:8080", f"ws://{node_id}.example:8081/ws",
                    Load(viewers, viewers + 2, 0.25), publishers)


async def test_nodes_announce_themselves_and_are_listed_as_announced(registry: NodeRegistry) -> None:
    assert await registry.nodes() == []
    assert await registry.heartbeat(node("b", viewers=3)) == []
    assert await registry.heartbeat(node("a", "demo")) == []
    assert await registry.nodes() == [node("a", "demo"), node("b", viewers=3)]
    await registry.heartbeat(node("b", viewers=40))  # a heartbeat replaces the announcement
    assert [n.load.viewers for n in await registry.nodes()] == [0, 40]


async def test_a_node_that_stops_heartbeating_drops_out_with_its_ttl(registry: NodeRegistry) -> None:
    await registry.heartbeat(node("a"))
    await registry.heartbeat(node("b"))
    for _ in range(4):  # b keeps beating, a is dead
        await asyncio.sleep(TTL / 3)
        await registry.heartbeat(node("b"))
    assert [n.id for n in await registry.nodes()] == ["b"]
    await registry.heartbeat(node("a"))  # a node that comes back is listed again
    assert [n.id for n in await registry.nodes()] == ["a", "b"]


async def test_one_node_holds_a_rooms_publisher(registry: NodeRegistry) -> None:
    assert await registry.publisher_node("demo") is None
    assert await registry.claim("demo", "a") == "a"
    assert await registry.claim("demo", "b") == "a"  # refused: a holds it
    assert await registry.claim("demo", "a") == "a"
    assert await registry.publisher_node("demo") == "a"
    assert not await registry.release("demo", "b")  # only the holder releases
    assert await registry.publisher_node("demo") == "a"
    assert await registry.release("demo", "a")
    assert await registry.publisher_node("demo") is None
    assert await registry.claim("demo", "b") == "b"


async def test_heartbeats_keep_claims_and_a_dead_nodes_claims_lapse(registry: NodeRegistry) -> None:
    await registry.heartbeat(node("a", "demo"))
    await registry.heartbeat(node("b", "shoes"))
    for _ in range(4):  # a keeps beating, b is dead
        await asyncio.sleep(TTL / 3)
        await registry.heartbeat(node("a", "demo"))
    assert await registry.publisher_node("demo") == "a"
    assert await registry.publisher_node("shoes") is None
    assert await registry.heartbeat(node("a", "demo", "shoes")) == []  # b's room is free to take
    assert await registry.heartbeat(node("b", "demo")) == ["demo"]  # a's is not: refused, and said so
    assert await registry.publisher_node("demo") == "a"


async def test_a_node_that_leaves_is_gone_at_once_with_its_claims(registry: NodeRegistry) -> None:
    await registry.heartbeat(node("a", "demo"))
    await registry.heartbeat(node("b"))
    await registry.leave(node("a", "demo"))
    assert [n.id for n in await registry.nodes()] == ["b"]
    assert await registry.publisher_node("demo") is None


async def test_presence_heartbeats_load_and_records_publishers(registry: NodeRegistry) -> None:
    load = [5, 9]
    presence = Presence(registry, "a", lambda: ("http://a.example", "ws://a.example/ws"),
                        lambda: (load[0], load[1]), interval=TTL / 4)
    other = Presence(registry, "b", lambda: ("http://b.example", "ws://b.example/ws"), lambda: (0, 0), TTL / 4)
    await presence.start()
    await other.start()
    try:
        presence.publisher("demo", True)
        other.publisher("demo", True)  # another node's publisher in the same room: the claim stays a's
        load[0] = 7
        await asyncio.sleep(TTL)
        assert await registry.publisher_node("demo") == "a"
        nodes = {n.id: n for n in await registry.nodes()}
        assert nodes["a"].publishers == ("demo",) and nodes["a"].load.viewers == 7
        assert nodes["a"].load.connections == 9 and nodes["a"].http_url == "http://a.example"
        view = presence.view()
        assert view["id"] == "a" and view["publishers"] == ["demo"]
        assert [n["id"] for n in view["nodes"]] == ["a", "b"]
        presence.publisher("demo", False)
        await asyncio.sleep(TTL / 2)
        # a's publisher left: b, whose publisher is in the room too, takes the claim at its next heartbeat.
        assert await registry.publisher_node("demo") == "b"
    finally:
        await presence.stop()
        await other.stop()
    assert await registry.nodes() == []


def test_a_heartbeat_must_come_well_within_the_ttl() -> None:
    with pytest.raises(ValueError, match="heartbeat interval"):
        Presence(MemoryNodeRegistry(1.0), "a", lambda: ("", ""), lambda: (0, 0), interval=1.0)
    with pytest.raises(ValueError, match="TTL"):
        MemoryNodeRegistry(0)


async def test_redis_keys_live_under_the_prefix_with_hash_tags(redis_target: RedisTarget) -> None:
    client = Redis.from_url(redis_target.url)
    try:
        registry = RedisNodeRegistry(client, redis_target.prefix, TTL)
        await registry.heartbeat(node("a", "demo"))
        keys = sorted([k.decode() async for k in client.scan_iter(match=redis_target.prefix + "*")])
        p = redis_target.prefix
        assert keys == [p + "room:{demo}:publisher", p + "{nodes}", p + "{nodes}:node:a"]
        await asyncio.sleep(TTL + 0.1)
        keys = sorted([k.decode() async for k in client.scan_iter(match=redis_target.prefix + "*")])
        assert keys == [p + "{nodes}"]  # the dead node's announcement and claim are gone by themselves
        await registry.heartbeat(node("b"))
        assert await client.zrange(p + "{nodes}", 0, -1) == [b"b"]  # and a heartbeat prunes the set
    finally:
        await client.aclose()
