"""The Redis bus between nodes (several buses on one Redis and prefix, as several processes would
have) and through Redis faults: a lost pub/sub connection, Redis restarted with its data, Redis
restarted without it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from engine.bus.redis import BusUnavailable, RedisBus
from tests.conftest import RedisTarget
from tests.engine.test_bus import Batches, listening, same, until
from tests.redis_server import RedisServer

MakeBus = Callable[..., Awaitable[RedisBus]]


async def _buses(url: str, prefix: str, timeout: float = 1.0, max_backoff: float = 2.0) -> AsyncIterator[MakeBus]:
    made: list[RedisBus] = []

    async def make(tick_ms: int = 10) -> RedisBus:
        bus = RedisBus(url, prefix, tick_ms=tick_ms, timeout=timeout, max_backoff=max_backoff)
        await bus.start()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.stop()


@pytest.fixture
async def nodes(redis_target: RedisTarget) -> AsyncIterator[MakeBus]:
    """Buses on the shared Redis under one test prefix: each one a node."""
    async for make in _buses(redis_target.url, redis_target.prefix):
        yield make


@pytest.fixture
async def faulty_nodes(own_redis: RedisServer) -> AsyncIterator[MakeBus]:
    """Buses on a Redis of the test's own, which the test stops and restarts."""
    async for make in _buses(own_redis.url, "livecart-test:", timeout=0.3, max_backoff=0.2):
        yield make


async def test_nodes_see_the_same_events_with_the_same_seqs_in_the_same_order(nodes: MakeBus) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    on_a, on_b = await listening(a, "room"), await listening(b, "room")
    published = await asyncio.gather(*(bus.publish("room", "chat", {"n": n}) for n in range(60) for bus in (a, b, c)))
    seqs = sorted(event.seq for event in published)
    assert seqs == list(range(seqs[0], seqs[0] + 180))  # one counter for all nodes: no seq twice, none skipped
    await until(lambda: len(on_a.events) == 180 and len(on_b.events) == 180)
    assert same(on_a.events) == same(on_b.events) == same(sorted(published, key=lambda e: e.seq))
    assert a.seq("room") == b.seq("room") == seqs[-1]


async def test_state_sent_with_events_keeps_one_order_on_every_node(nodes: MakeBus) -> None:
    """Each node's pending state values go out with its next event (the tick is a minute), through
    the one publish script: whatever the interleaving of nodes, every node sees one order, each
    event followed at once by the values its node had pending, handed over as one batch."""
    a, b, c = await nodes(tick_ms=60_000), await nodes(tick_ms=60_000), await nodes(tick_ms=60_000)
    on_a, on_b = Batches(), Batches()
    for bus, recorder in ((a, on_a), (b, on_b)):
        bus.subscribe("room", recorder)
        await bus.ready("room")

    async def act(bus: RedisBus, name: str, n: int) -> None:
        bus.set_state("room", f"count:{name}", "count", {"n": n})
        await bus.publish("room", "chat", {"by": name, "n": n})

    await asyncio.gather(*(act(bus, name, n) for n in range(40) for bus, name in ((a, "a"), (b, "b"), (c, "c"))))
    await until(lambda: len(on_a.events) == 240 and len(on_b.events) == 240)
    assert same(on_a.events) == same(on_b.events)
    seqs = on_a.seqs()
    assert seqs == list(range(seqs[0], seqs[0] + 240))  # one counter for all nodes
    assert on_a.batches == on_b.batches
    for batch in on_a.batches:
        assert [kind for kind, _ in batch] == ["chat", "count"]  # each event with its node's value
    for event, value in zip(on_a.events[::2], on_a.events[1::2], strict=True):
        assert value.data == {"key": f"count:{event.data['by']}", "n": event.data["n"]}
    latest = {value.data["key"]: {"type": "count", "n": value.data["n"]} for value in on_a.events[1::2]}
    assert a.state("room") == b.state("room") == latest and len(latest) == 3


async def test_state_and_direct_messages_reach_every_node(nodes: MakeBus) -> None:
    a, b = await nodes(), await nodes()
    on_a, on_b = await listening(a, "room"), await listening(b, "room")
    a.set_state("room", "media", "media.status", {"live": True})
    await b.send_direct("room", "alice", "cart.updated", {"items": 1})
    await until(lambda: len(on_b.events) == 1 and len(on_a.direct) == 1)
    assert b.state("room") == a.state("room") == {"media": {"type": "media.status", "live": True}}
    assert on_a.direct == on_b.direct == [("alice", {"items": 1, "type": "cart.updated"})]
    # A node that loads the room later reads the state from Redis.
    c = await nodes()
    await listening(c, "room")
    assert c.state("room") == a.state("room") and c.seq("room") == a.seq("room")


async def test_a_node_loading_a_busy_room_gets_no_gap_and_no_duplicate(nodes: MakeBus) -> None:
    a, b = await nodes(), await nodes()
    on_a = await listening(a, "room")
    running = True

    async def publish_on() -> None:
        n = 0
        while running:
            await a.publish("room", "x", {"n": n})
            n += 1

    publisher = asyncio.create_task(publish_on())
    await until(lambda: len(on_a.events) > 20)
    on_b = await listening(b, "room")  # loads while events keep coming
    await until(lambda: len(on_b.events) > 50)
    running = False
    await publisher
    await until(lambda: on_b.seqs()[-1] == a.seq("room") == on_a.seqs()[-1])
    # What B was handed live is the tail of A's order, and B's history (what it loaded, then
    # what it was handed) is all of it: no seq twice, none skipped.
    assert same(on_b.events) == same(on_a.events[-len(on_b.events):])
    replayed = b.history("room", on_a.seqs()[0] - 1)
    assert same(replayed) == same(on_a.events)


async def test_resume_on_another_node_replays_exactly_what_was_missed(nodes: MakeBus) -> None:
    a, b = await nodes(), await nodes()
    on_a = await listening(a, "room")
    for n in range(5):
        await a.publish("room", "x", {"n": n})
    await until(lambda: len(on_a.events) == 5)
    seen = list(on_a.events)
    left_at = seen[2].seq  # a client on A saw up to the third event, then dropped
    missed = [await b.publish("room", "x", {"n": n}) for n in range(5, 8)]
    await listening(b, "room")
    assert same(b.history("room", left_at)) == same(seen[3:] + missed)


async def test_a_lost_subscription_is_filled_from_history(nodes: MakeBus, redis_target: RedisTarget) -> None:
    a, b = await nodes(), await nodes()
    on_b = await listening(b, "room")
    await a.publish("room", "x", {"n": 0})
    await until(lambda: len(on_b.events) == 1)
    admin = aioredis.from_url(redis_target.url)
    try:
        await admin.client_kill_filter(_type="pubsub", skipme=True)  # every node's pub/sub connection
    finally:
        await admin.aclose()
    for n in range(1, 6):  # published while B is reconnecting: B hears none of them live
        await a.publish("room", "x", {"n": n})
    await until(lambda: len(on_b.events) == 6)
    assert [e.data["n"] for e in on_b.events] == list(range(6)) and on_b.resets == 0
    assert b.health()["reconnects"] >= 1 and b.health()["connected"]
    await a.publish("room", "x", {"n": 6})
    await until(lambda: len(on_b.events) == 7)
    assert on_b.seqs() == list(range(on_b.seqs()[0], on_b.seqs()[0] + 7))


async def test_redis_down_publish_fails_fast_then_everything_resumes(own_redis: RedisServer,
                                                                     faulty_nodes: MakeBus) -> None:
    a, b = await faulty_nodes(), await faulty_nodes()
    on_a, on_b, quiet_on_b = await listening(a, "room"), await listening(b, "room"), await listening(b, "quiet")
    before = await a.publish("room", "x", {"n": 0})
    a.set_state("room", "viewers", "viewers", {"count": 1})
    await until(lambda: len(on_b.events) == 2)
    own_redis.stop()
    await until(lambda: not a.health()["connected"] and not b.health()["connected"])
    a.set_state("room", "viewers", "viewers", {"count": 2})  # the failed publish takes it, then keeps it
    with pytest.raises(BusUnavailable) as refused:
        await a.publish("room", "x", {"n": 1})
    assert refused.value.code == "unavailable" and refused.value.status == 503
    await a.send_direct("room", "alice", "cart.updated", {})  # not awaited on Redis: this node's listeners have it
    assert on_a.direct == [("alice", {"type": "cart.updated"})]
    with pytest.raises(BusUnavailable):  # a room with no state pending: nothing waits for it after
        await a.publish("quiet", "x", {"n": 1})
    own_redis.start()  # with its append-only file: history and seq as they were
    await until(lambda: a.health()["connected"] and b.health()["connected"])
    after = await a.publish("room", "x", {"n": 2})
    await until(lambda: len(on_b.events) == 4)
    assert on_b.resets == 0
    # The kept state value goes out at the first tick Redis answers, before or after the new event.
    assert sorted((e.type, str(e.data)) for e in on_b.events[2:]) == [
        ("viewers", str({"key": "viewers", "count": 2})), ("x", str({"n": 2}))]
    assert on_b.seqs() == list(range(before.seq, before.seq + 4))  # the order went on where it was
    assert after.seq == next(e.seq for e in on_b.events if e.data == {"n": 2})
    assert b.state("room")["viewers"] == {"type": "viewers", "count": 2}
    quiet = await a.publish("quiet", "x", {"n": 2})
    await until(lambda: len(quiet_on_b.events) == 1)
    assert same(quiet_on_b.events) == same([quiet]) and b.health()["connected"]


async def test_redis_that_lost_its_data_means_a_reset_and_a_fresh_epoch() -> None:
    server = RedisServer(appendonly=False)
    server.start()
    try:
        bus = RedisBus(server.url, "livecart-test:", tick_ms=10, timeout=0.3, max_backoff=0.2)
        await bus.start()
        try:
            on = await listening(bus, "room")
            old = await bus.publish("room", "x", {"n": 0})
            bus.set_state("room", "media", "media.status", {"live": True})
            await until(lambda: len(on.events) == 2)
            server.stop()
            await until(lambda: not bus.health()["connected"])
            time.sleep(0.01)
            server.start()  # empty: the room's stream, state and seq are gone
            await until(lambda: on.resets == 1)
            assert bus.state("room") == {}
            assert bus.seq("room") > old.seq + 1  # a new epoch starts above every old seq
            assert bus.history("room", old.seq) is None  # a client resuming from before: snapshot
            fresh = await bus.publish("room", "x", {"n": 1})
            await until(lambda: len(on.events) == 3)
            assert fresh.seq == bus.seq("room") and on.resets == 1
        finally:
            await bus.stop()
    finally:
        server.close()


async def test_a_burst_of_publishes_waits_for_the_bounded_connections(redis_target: RedisTarget) -> None:
    bus = RedisBus(redis_target.url, redis_target.prefix, max_connections=4)
    await bus.start()
    try:
        on = await listening(bus, "room")
        published = await asyncio.gather(*(bus.publish("room", "chat", {"n": n}) for n in range(300)))
        seqs = sorted(event.seq for event in published)
        assert seqs == list(range(seqs[0], seqs[0] + 300))
        await until(lambda: len(on.events) == 300)
        assert on.seqs() == seqs
    finally:
        await bus.stop()
