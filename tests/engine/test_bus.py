"""The Bus contract, run unchanged against every backend: memory (one process) and Redis (many nodes).

Delivery on the Redis bus goes through Redis pub/sub, so the tests wait for what a listener is
owed instead of expecting it the moment ``publish`` returns; reads are made after ``ready``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from engine.bus.base import Bus, Event
from engine.bus.memory import MemoryBus
from engine.bus.redis import RedisBus
from tests.conftest import RedisTarget

MakeBus = Callable[..., Awaitable[Bus]]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.direct: list[tuple[str, dict[str, Any]]] = []
        self.resets = 0

    def on_events(self, events: list[Event]) -> None:
        self.events.extend(events)

    def on_direct(self, user: str, message: dict[str, Any]) -> None:
        self.direct.append((user, message))

    def on_reset(self) -> None:
        self.resets += 1

    def seqs(self) -> list[int]:
        return [event.seq for event in self.events]


def same(events: list[Event] | None) -> list[tuple[int, str, dict[str, Any]]] | None:
    """Events compared by what clients see of them (each node builds its own Event objects)."""
    return None if events is None else [(event.seq, event.type, event.data) for event in events]


async def until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.005)


async def listening(bus: Bus, room: str) -> Recorder:
    recorder = Recorder()
    bus.subscribe(room, recorder)
    await bus.ready(room)
    return recorder


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest, redis_target: RedisTarget) -> AsyncIterator[MakeBus]:
    made: list[Bus] = []
    target = redis_target if request.param == "redis" else None

    async def make(**limits: Any) -> Bus:
        bus: Bus
        limits.setdefault("tick_ms", 10)
        bus = MemoryBus(**limits) if target is None else RedisBus(target.url, target.prefix, **limits)
        await bus.start()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.stop()


async def test_seq_is_strictly_increasing_and_listeners_see_every_event(make_bus: MakeBus) -> None:
    bus = await make_bus()
    recorder = await listening(bus, "r")
    start = bus.seq("r")
    events = [await bus.publish("r", "x", {"n": i}) for i in range(50)]
    assert [e.seq for e in events] == list(range(start + 1, start + 51))
    await until(lambda: len(recorder.events) == 50)
    assert [e.data["n"] for e in recorder.events] == list(range(50))
    assert recorder.seqs() == [e.seq for e in events] and bus.seq("r") == events[-1].seq
    assert b'"type":"x"' in events[0].json and b'"seq":' in events[0].json
    assert recorder.events[0].json == events[0].json  # the very bytes the publisher built


async def test_rooms_have_independent_sequences(make_bus: MakeBus) -> None:
    bus = await make_bus()
    in_a, in_b = await listening(bus, "a"), await listening(bus, "b")
    a = await bus.publish("a", "x", {})
    b = await bus.publish("b", "x", {})
    await until(lambda: len(in_a.events) == 1 and len(in_b.events) == 1)
    assert bus.seq("a") == a.seq and bus.seq("b") == b.seq
    assert same(bus.history("a", a.seq - 1)) == same([a])
    assert same(in_b.events) == same([b])


async def test_state_is_coalesced_at_the_tick(make_bus: MakeBus) -> None:
    bus = await make_bus()
    recorder = await listening(bus, "r")
    for n in range(100):
        bus.set_state("r", "stock:p1", "product.stock", {"available": n})
    bus.set_state("r", "viewers", "viewers", {"count": 3})
    await until(lambda: len(recorder.events) >= 2)
    await asyncio.sleep(0.05)  # no more than the two
    assert [(e.type, e.data) for e in recorder.events] == [
        ("product.stock", {"key": "stock:p1", "available": 99}),
        ("viewers", {"key": "viewers", "count": 3}),
    ]
    assert bus.state("r")["stock:p1"] == {"type": "product.stock", "available": 99}
    assert bus.seq("r") == recorder.events[-1].seq


async def test_history_replays_or_says_too_old(make_bus: MakeBus) -> None:
    bus = await make_bus(history_size=10)
    recorder = await listening(bus, "r")
    first = await bus.publish("r", "x", {"n": 0})
    for n in range(1, 30):
        await bus.publish("r", "x", {"n": n})
    await until(lambda: len(recorder.events) == 30)
    assert bus.history("r", bus.seq("r")) == []
    assert [e.data["n"] for e in bus.history("r", bus.seq("r") - 3)] == [27, 28, 29]
    assert bus.history("r", first.seq) is None
    assert bus.history("r", bus.seq("r") + 5) is None


async def test_history_has_an_age_limit(make_bus: MakeBus) -> None:
    bus = await make_bus(history_age=0.2)
    recorder = await listening(bus, "r")
    old = await bus.publish("r", "x", {})
    await bus.publish("r", "x", {})
    await until(lambda: len(recorder.events) == 2)
    await asyncio.sleep(0.3)
    assert bus.history("r", old.seq - 1) is None


async def test_direct_messages_reach_the_listener_with_the_user(make_bus: MakeBus) -> None:
    bus = await make_bus()
    recorder = await listening(bus, "r")
    before = bus.seq("r")
    await bus.send_direct("r", "alice", "cart.added", {"qty": 1})
    await until(lambda: len(recorder.direct) == 1)
    assert recorder.direct == [("alice", {"qty": 1, "type": "cart.added"})]
    assert bus.seq("r") == before
    bus.unsubscribe("r", recorder)
    await bus.publish("r", "x", {})
    await asyncio.sleep(0.05)
    assert recorder.events == []


async def test_a_later_bus_never_reuses_an_earlier_seq(make_bus: MakeBus) -> None:
    earlier = await make_bus()
    event = await earlier.publish("r", "x", {})
    time.sleep(0.002)
    later = await make_bus()
    await listening(later, "r")
    assert later.seq("r") >= event.seq
    following = await later.publish("r", "x", {})
    assert following.seq > event.seq


async def test_health_says_connected(make_bus: MakeBus) -> None:
    bus = await make_bus()
    await until(lambda: bus.health()["connected"])
    assert bus.health()["backend"] in ("memory", "redis")


class Batches(Recorder):
    """Also records how events were handed over: each batch is one write to every viewer."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, int]]] = []

    def on_events(self, events: list[Event]) -> None:
        super().on_events(events)
        self.batches.append([(e.type, e.seq) for e in events])


async def test_pending_state_goes_out_with_the_next_discrete_event(make_bus: MakeBus) -> None:
    """One batch (one write to every viewer) instead of the event now and the state at the tick.
    The tick is a minute: what arrives went out with the event."""
    bus = await make_bus(tick_ms=60_000)
    recorder = Batches()
    bus.subscribe("r", recorder)
    await bus.ready("r")
    bus.set_state("r", "sale.remaining:s1", "sale.remaining", {"remaining": 5})
    bus.set_state("r", "sale.remaining:s1", "sale.remaining", {"remaining": 4})
    started = await bus.publish("r", "sale.started", {"id": "s1"})
    await until(lambda: len(recorder.events) == 2)
    assert recorder.batches == [[("sale.started", started.seq), ("sale.remaining", started.seq + 1)]]
    assert recorder.events[1].data == {"key": "sale.remaining:s1", "remaining": 4}
    ended = await bus.publish("r", "sale.ended", {"id": "s1"})  # nothing was left pending
    await until(lambda: len(recorder.events) == 3)
    assert recorder.batches[1:] == [[("sale.ended", started.seq + 2)]] and ended.seq == started.seq + 2
    assert same(bus.history("r", started.seq - 1)) == same(recorder.events)
    assert bus.state("r")["sale.remaining:s1"] == {"type": "sale.remaining", "remaining": 4}


async def test_the_tick_stretches_while_the_loop_is_held_and_returns_when_quiet(make_bus: MakeBus) -> None:
    """The ticker of either backend paces itself by how late the loop wakes it; values set meanwhile
    still go out at the (stretched) tick, the latest of each key."""
    bus = await make_bus(tick_ms=10, tick_max_ms=80)
    recorder = await listening(bus, "r")
    assert bus.tick == 0.010
    n = 0
    async with asyncio.timeout(30):
        while bus.tick < 0.080:  # each turn of the loop is held past any tick's deadline
            n += 1
            bus.set_state("r", "count", "count", {"n": n})
            time.sleep(0.03)
            await asyncio.sleep(0)
    await until(lambda: bool(recorder.events) and recorder.events[-1].data["n"] == n, timeout=30)
    await until(lambda: bus.tick == 0.010, timeout=30)
