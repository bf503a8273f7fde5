"""The lease contract, run unchanged against the memory and the Redis backend, then the keeper on top of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from engine.leases.base import Leases
from engine.leases.keeper import LeaseKeeper
from engine.leases.memory import MemoryLeases
from engine.leases.redis import RedisLeases
from tests.conftest import RedisTarget
from tests.redis_server import RedisServer

TTL = 1.0


@pytest.fixture(params=["memory", "redis"])
async def leases(request: pytest.FixtureRequest, redis_target: RedisTarget) -> AsyncIterator[Leases]:
    if request.param == "memory":
        yield MemoryLeases()
        return
    client = Redis.from_url(redis_target.url)
    try:
        yield RedisLeases(client, redis_target.prefix)
    finally:
        await client.aclose()


async def test_one_holder_at_a_time_and_the_holder_gets_it_back(leases: Leases) -> None:
    first = await leases.acquire("demo", "node-a", TTL)
    assert first is not None and first.holder == "node-a" and first.valid()
    assert await leases.acquire("demo", "node-b", TTL) is None
    again = await leases.acquire("demo", "node-a", TTL)
    assert again is not None and again.token == first.token
    assert await leases.token("demo") == first.token
    other_room = await leases.acquire("other", "node-b", TTL)
    assert other_room is not None  # leases are per name


async def test_the_holder_stops_before_the_store_lets_it_go(leases: Leases) -> None:
    before = time.monotonic()
    grant = await leases.acquire("demo", "node-a", TTL)
    assert grant is not None
    assert grant.valid_until < before + TTL  # the drift allowance: never trusted up to the store's TTL
    assert not grant.valid(grant.valid_until)


async def test_renewing_keeps_it_past_its_ttl(leases: Leases) -> None:
    grant = await leases.acquire("demo", "node-a", TTL)
    assert grant is not None
    for _ in range(6):
        await asyncio.sleep(TTL / 3)
        renewed = await leases.renew(grant, TTL)
        assert renewed is not None and renewed.token == grant.token and renewed.valid_until > grant.valid_until
        grant = renewed
        assert await leases.acquire("demo", "node-b", TTL) is None


async def test_a_holder_that_stops_renewing_is_taken_over_with_a_larger_token(leases: Leases) -> None:
    stale = await leases.acquire("demo", "node-a", TTL)
    assert stale is not None
    await asyncio.sleep(TTL + 0.1)
    assert not stale.valid()
    assert await leases.token("demo") is None
    taken = await leases.acquire("demo", "node-b", TTL)
    assert taken is not None and taken.token > stale.token
    # The stale holder comes back: its renewal and release are refused and change nothing.
    assert await leases.renew(stale, TTL) is None
    assert not await leases.release(stale)
    assert await leases.token("demo") == taken.token
    assert await leases.acquire("demo", "node-a", TTL) is None


async def test_release_hands_over_at_once_and_tokens_keep_growing(leases: Leases) -> None:
    tokens = []
    for holder in ("node-a", "node-b", "node-a"):
        grant = await leases.acquire("demo", holder, TTL)
        assert grant is not None
        tokens.append(grant.token)
        assert await leases.release(grant)
        assert not await leases.release(grant)  # twice: the second finds nothing of its own
        assert await leases.token("demo") is None
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


async def test_keepers_share_the_rooms_and_a_stopped_keeper_hands_them_over(leases: Leases) -> None:
    rooms = ["demo", "shoes"]
    first = LeaseKeeper(leases, "node-a", TTL, lambda: rooms)
    second = LeaseKeeper(leases, "node-b", TTL, lambda: rooms)
    await first.start()
    await second.start()
    try:
        assert first.held() == ["demo", "shoes"] and second.held() == []
        old = first.token("demo")
        assert old is not None and second.token("demo") is None
        assert await first.confirm("demo", old)
        await asyncio.sleep(TTL * 2)  # renewals keep them where they are
        assert first.held() == ["demo", "shoes"] and second.held() == []
        await first.stop()
        assert first.held() == [] and first.token("demo") is None
        await second.round()
        new = second.token("demo")
        assert second.held() == ["demo", "shoes"] and new is not None and new > old
        assert not await first.confirm("demo", old)
        rooms.remove("shoes")  # a room no longer served is let go
        await second.round()
        assert second.held() == ["demo"] and await leases.token("shoes") is None
    finally:
        await first.stop()
        await second.stop()


async def test_a_keeper_cut_off_from_redis_stops_at_its_deadline_and_resumes_with_its_token() -> None:
    server = RedisServer()
    server.start()
    client = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    keeper = LeaseKeeper(RedisLeases(client, "livecart:"), "node-a", TTL, lambda: ["demo"])
    try:
        await keeper.start()
        token = keeper.token("demo")
        assert token is not None
        server.stop()
        await asyncio.sleep(TTL + 0.2)
        assert keeper.token("demo") is None and keeper.held() == []  # no clock runs on a lease it cannot renew
        assert not await keeper.confirm("demo", token)
        server.start()
        await keeper.round()
        # The append-only file kept the lease key, but its TTL ran out meanwhile: taken again, a new token.
        assert keeper.token("demo") == token + 1
    finally:
        await keeper.stop()
        await client.aclose()
        server.close()
