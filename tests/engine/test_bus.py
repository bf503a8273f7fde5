"""The Bus contract, run against every backend (the Redis one joins the list when it exists)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.bus.base import Bus, Event
from engine.bus.memory import MemoryBus


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.direct: list[tuple[str, dict[str, Any]]] = []

    def on_events(self, events: list[Event]) -> None:
        self.events.extend(events)

    def on_direct(self, user: str, message: dict[str, Any]) -> None:
        self.direct.append((user, message))


def memory_bus(**limits: Any) -> Bus:
    return MemoryBus(tick_ms=10, **limits)


BACKENDS = [memory_bus]


@pytest.fixture(params=BACKENDS, ids=lambda f: f.__name__)
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    made: list[Bus] = []

    async def make(**limits: Any) -> Bus:
        bus = request.param(**limits)
        await bus.start()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.stop()


async def test_seq_is_strictly_increasing_and_listeners_see_every_event(make_bus) -> None:
    bus = await make_bus()
    recorder = Recorder()
    bus.subscribe("r", recorder)
    start = bus.seq("r")
    events = [await bus.publish("r", "x", {"n": i}) for i in range(50)]
    assert [e.seq for e in events] == list(range(start + 1, start + 51))
    assert [e.data["n"] for e in recorder.events] == list(range(50))
    assert b'"type":"x"' in events[0].json and b'"seq":' in events[0].json


async def test_rooms_have_independent_sequences(make_bus) -> None:
    bus = await make_bus()
    a = await bus.publish("a", "x", {})
    b = await bus.publish("b", "x", {})
    assert bus.seq("a") == a.seq and bus.seq("b") == b.seq
    assert bus.history("a", a.seq - 1) == [a]


async def test_state_is_coalesced_at_the_tick(make_bus) -> None:
    bus = await make_bus()
    recorder = Recorder()
    bus.subscribe("r", recorder)
    for n in range(100):
        bus.set_state("r", "stock:p1", "product.stock", {"available": n})
    bus.set_state("r", "viewers", "viewers", {"count": 3})
    await asyncio.sleep(0.1)
    assert [(e.type, e.data) for e in recorder.events] == [
        ("product.stock", {"key": "stock:p1", "available": 99}),
        ("viewers", {"key": "viewers", "count": 3}),
    ]
    assert bus.state("r")["stock:p1"] == {"type": "product.stock", "available": 99}


async def test_history_replays_or_says_too_old(make_bus) -> None:
    bus = await make_bus(history_size=10)
    first = await bus.publish("r", "x", {"n": 0})
    for n in range(1, 30):
        await bus.publish("r", "x", {"n": n})
    assert bus.history("r", bus.seq("r")) == []
    assert [e.data["n"] for e in bus.history("r", bus.seq("r") - 3)] == [27, 28, 29]
    assert bus.history("r", first.seq) is None
    assert bus.history("r", bus.seq("r") + 5) is None


async def test_history_has_an_age_limit(make_bus) -> None:
    bus = await make_bus(history_age=0.2)
    old = await bus.publish("r", "x", {})
    await bus.publish("r", "x", {})
    await asyncio.sleep(0.3)
    assert bus.history("r", old.seq - 1) is None


async def test_direct_messages_reach_the_listener_with_the_user(make_bus) -> None:
    bus = await make_bus()
    recorder = Recorder()
    bus.subscribe("r", recorder)
    before = bus.seq("r")
    await bus.send_direct("r", "alice", "cart.added", {"qty": 1})
    assert recorder.direct == [("alice", {"qty": 1, "type": "cart.added"})]
    assert bus.seq("r") == before
    bus.unsubscribe("r", recorder)
    await bus.publish("r", "x", {})
    assert recorder.events == []


async def test_a_new_process_starts_above_any_earlier_seq(make_bus) -> None:
    earlier = await make_bus()
    event = await earlier.publish("r", "x", {})
    time.sleep(0.002)
    later = await make_bus()
    assert later.seq("r") > event.seq


async def test_pending_state_goes_out_with_the_next_discrete_event(make_bus) -> None:
    """One batch (one write to every viewer) instead of the event now and the state at the tick."""

    class Batches(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[list[tuple[str, int]]] = []

        def on_events(self, events: list[Event]) -> None:
            super().on_events(events)
            self.batches.append([(e.type, e.seq) for e in events])

    bus = await make_bus()
    recorder = Batches()
    bus.subscribe("r", recorder)
    bus.set_state("r", "sale.remaining:s1", "sale.remaining", {"remaining": 5})
    bus.set_state("r", "sale.remaining:s1", "sale.remaining", {"remaining": 4})
    started = await bus.publish("r", "sale.started", {"id": "s1"})
    assert recorder.batches == [[("sale.started", started.seq), ("sale.remaining", started.seq + 1)]]
    assert recorder.events[1].data == {"key": "sale.remaining:s1", "remaining": 4}
    await asyncio.sleep(0.1)  # nothing was left for the tick
    assert len(recorder.batches) == 1
    assert bus.history("r", started.seq - 1) == recorder.events
    assert bus.state("r")["sale.remaining:s1"] == {"type": "sale.remaining", "remaining": 4}
