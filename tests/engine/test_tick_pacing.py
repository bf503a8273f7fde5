"""The coalescing tick's pace (engine.bus.pacing): what each signal of a loaded loop does to it.

The commerce tests drive a whole bus with a loop held in slices (late timers); here the pacer's
rule itself, and a ticker whose timers are on time while the loop's thread is on the CPU most of
the time (its CPU clock is the test's): only that CPU time tells that the loop is loaded.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.bus import pacing
from engine.bus.pacing import LOADED_LAG, Ticker, TickPacer

QUIET, MAXIMUM = 0.02, 0.32


def test_a_loop_busy_twice_in_a_row_stretches_the_tick_to_its_maximum_and_a_quiet_one_halves_it_back() -> None:
    pacer = TickPacer(QUIET, MAXIMUM)
    pacer.woke(0.0, 0.9)  # once may be a GC pass
    assert pacer.interval == QUIET
    pacer.woke(0.0, 0.9)
    assert pacer.interval == MAXIMUM
    pacer.woke(0.0, 0.9)
    assert pacer.interval == MAXIMUM
    seen = []
    while pacer.interval > QUIET:
        pacer.woke(0.0, 0.1)
        seen.append(pacer.interval)
    assert seen == [0.16, 0.08, 0.04, 0.02]


def test_late_wake_ups_double_the_tick_step_by_step() -> None:
    pacer = TickPacer(QUIET, MAXIMUM)
    seen = []
    for _ in range(6):
        pacer.woke(4 * LOADED_LAG, 0.0)
        seen.append(pacer.interval)
    assert seen == [0.04, 0.08, 0.16, 0.32, 0.32, 0.32]


async def test_the_ticker_stretches_by_the_loop_threads_cpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ticker measures the loop thread's CPU time between its wake-ups: while it says the loop
    is busy the tick stays at its maximum, with timers on time; once it falls, the tick comes back."""
    loop = asyncio.get_running_loop()
    share = 0.0
    cpu = 0.0
    last = loop.time()

    def thread_time() -> float:  # the loop's CPU time as if it were busy `share` of the time
        nonlocal cpu, last
        now = loop.time()
        cpu, last = cpu + share * (now - last), now
        return cpu

    monkeypatch.setattr(pacing.time, "thread_time", thread_time)
    flushes = 0

    async def flush() -> None:
        nonlocal flushes
        flushes += 1

    ticker = Ticker(QUIET, MAXIMUM, flush)
    ticker.start()
    try:
        await asyncio.sleep(5 * QUIET)
        assert ticker.interval == QUIET and flushes >= 2
        share = 0.9
        async with asyncio.timeout(30):
            while ticker.interval < MAXIMUM:
                await asyncio.sleep(QUIET / 2)
        share = 0.1
        async with asyncio.timeout(30):
            while ticker.interval > QUIET:
                await asyncio.sleep(QUIET / 2)
    finally:
        await ticker.stop()
