"""The coalescing tick's pace: stretched while the loop is loaded, back to the configured tick when quiet.

Every state flush fans a frame out to every viewer of a room, so on a saturated core the
counters compete with the taps they count. The ticker knows how loaded the loop is without any
work on the hot path, in two ways. It is woken late by exactly the time the loop spent on other
callbacks past its deadline: a smoothed lag above ``LOADED_LAG`` doubles the interval (up to the
maximum), and the smoothing keeps a single stray pause (a GC pass) from stretching the tick for
long. And the loop's thread's CPU time since the last wake-up says how busy the loop was: at
``LOADED_BUSY`` or more twice in a row (once may be a GC pass) the loop is close to saturation
before any timer is late (a sell-out fills a core within a tick), so the interval goes to the
maximum at once. Otherwise the interval halves back toward the configured tick. Discrete events
(sold out, sale start and end) never wait for the tick, so only the coalesced counters slow down.

Both buses (memory and Redis) run their flush through the same ``Ticker``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from engine import metrics
from engine.tasks import cancel_and_wait

# Smoothed wake-up lag, seconds, above which the loop counts as loaded. A quiet loop wakes its
# timers within a millisecond; a loop saturated with taps is late by tens of milliseconds.
LOADED_LAG = 0.010
# Weight of the newest lag sample in the smoothed lag.
SMOOTHING = 0.5
# Share of the time between two wake-ups the loop's thread spent on the CPU, at and above which the
# loop counts as loaded: past it, the core has too little room left for a burst of taps.
LOADED_BUSY = 0.75


class TickPacer:
    """Chooses the next tick interval from how late the ticker woke and how busy the loop was."""

    __slots__ = ("quiet", "maximum", "interval", "lag", "busy")

    def __init__(self, quiet: float, maximum: float) -> None:
        self.quiet = quiet
        self.maximum = max(quiet, maximum)
        self.interval = quiet
        self.lag = 0.0
        self.busy = 0.0  # the previous wake-up's busy share
        metrics.BUS_TICK.set(quiet)

    def woke(self, late: float, busy: float) -> None:
        """Record how late (seconds) the ticker woke and how busy (share of a core) the loop was
        since its last wake-up, and pick the next interval."""
        self.lag += SMOOTHING * (max(late, 0.0) - self.lag)
        busy, self.busy = min(busy, self.busy), busy
        if busy >= LOADED_BUSY:
            interval = self.maximum
        elif self.lag > LOADED_LAG:
            interval = min(self.maximum, self.interval * 2)
        else:
            interval = max(self.quiet, self.interval / 2)
        if interval != self.interval:
            self.interval = interval
            metrics.BUS_TICK.set(interval)


class Ticker:
    """Runs a bus's state flush at the paced tick: every backend coalesces its counters the same way.

    The flush is awaited before the next sleep starts, so a backend whose flush waits on a store
    (Redis) never has two flushes in flight, and its wait is not mistaken for loop load: lateness
    is the sleep's alone, and busy is the loop thread's CPU time (flushes included: a big room's
    flush is part of the load) over the time since the last wake-up."""

    __slots__ = ("pacer", "_flush", "_task")

    def __init__(self, quiet: float, maximum: float, flush: Callable[[], Awaitable[None]]) -> None:
        self.pacer = TickPacer(quiet, maximum)
        self._flush = flush
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """The current coalescing interval in seconds (stretched while the loop is loaded)."""
        return self.pacer.interval

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        since, cpu = time.perf_counter(), time.thread_time()  # (the loop's clock is cached per turn)
        while True:
            interval = self.pacer.interval
            due = loop.time() + interval
            await asyncio.sleep(interval)
            now, now_cpu = time.perf_counter(), time.thread_time()
            self.pacer.woke(loop.time() - due, (now_cpu - cpu) / max(now - since, 1e-6))
            since, cpu = now, now_cpu
            await self._flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bus-ticker")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
