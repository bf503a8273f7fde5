"""The viewer tally nodes share on Redis (signaling.audience_redis), two tallies standing for two
nodes on one prefix: the sum over both, published by the node running the room's clock only, and
the count of a node that stops writing dropped once its last write is older than the TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from signaling.audience import Audience
from signaling.audience_redis import SharedViewers
from tests.conftest import RedisTarget


@pytest.fixture
async def client(redis_target: RedisTarget) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_target.url)
    yield client
    await client.aclose()


def node(client: aioredis.Redis, prefix: str, name: str, published: list[tuple[str, str, int]],
         clocks: set[str], ttl: float = 5.0) -> tuple[Audience, SharedViewers]:
    tally = SharedViewers(client, prefix, name, lambda room, count: published.append((name, room, count)),
                          lambda: clocks, interval=0.1, ttl=ttl)
    audience = Audience(lambda room, count: pytest.fail("a shared audience publishes through its tally"))
    audience.share(tally)
    return audience, tally


async def test_the_sum_over_nodes_is_published_by_the_room_clocks_node_only(
        client: aioredis.Redis, redis_target: RedisTarget) -> None:
    published: list[tuple[str, str, int]] = []
    a, tally_a = node(client, redis_target.prefix, "a", published, {"r"})
    b, tally_b = node(client, redis_target.prefix, "b", published, set())
    for n in range(2):
        a.joined("r", "ws", f"a{n}")
    for n in range(3):
        b.joined("r", "ws", f"b{n}")
    b.joined("r", "media", "b0")  # the same person by another path counts once
    await tally_b.sync()
    await tally_a.sync()
    assert published == [("a", "r", 5)]
    assert b.count("r") == 3  # what b read before a wrote
    await tally_b.sync()  # its refresh is not due: it reads, writing nothing
    assert (a.count("r"), b.count("r"), a.local("r"), b.local("r")) == (5, 5, 2, 3)
    await tally_a.sync()  # unchanged: nothing more is published
    assert published == [("a", "r", 5)]
    b.left("r", "ws", "b1")
    assert b.count("r") == 4  # its own change shows at once on its node
    await tally_b.sync()
    await tally_a.sync()
    assert published[-1] == ("a", "r", 4)
    await tally_b.stop()  # a node that stops takes its viewers out at once
    await tally_a.sync()
    assert published[-1] == ("a", "r", 2)


async def test_a_node_that_stops_writing_leaves_the_sum_after_the_ttl(
        client: aioredis.Redis, redis_target: RedisTarget) -> None:
    published: list[tuple[str, str, int]] = []
    a, tally_a = node(client, redis_target.prefix, "a", published, {"r"}, ttl=0.6)
    b, tally_b = node(client, redis_target.prefix, "b", published, set(), ttl=0.6)
    a.joined("r", "ws", "ana")
    b.joined("r", "ws", "bo")
    await tally_b.sync()  # b writes once, then dies (no stop: nothing taken out)
    await tally_a.start()
    try:
        async with asyncio.timeout(5):
            while published[-1:] != [("a", "r", 2)]:
                await asyncio.sleep(0.05)
        async with asyncio.timeout(5):  # a keeps writing (every third of the TTL); b's count lapses
            while published[-1] != ("a", "r", 1):
                await asyncio.sleep(0.05)
        assert a.count("r") == 1
    finally:
        await tally_a.stop()


def test_the_read_interval_must_be_shorter_than_the_ttl(redis_target: RedisTarget) -> None:
    client = aioredis.from_url(redis_target.url)
    with pytest.raises(ValueError, match="--viewers-interval"):
        SharedViewers(client, "p:", "a", lambda room, count: None, set, interval=5.0, ttl=5.0)
