"""A loop-lag probe: how long the event loop a test shares with the engine was held at a stretch.

The attack tests run the engine in the test's own loop, so a task that wakes every few
milliseconds and records how late it woke measures exactly the stall a real viewer's
websocket or RTP packet would have suffered. Stalls are seconds versus milliseconds, so the
bound the tests assert (100 ms) leaves this shared machine a generous margin.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

MAX_STALL = 0.100


class LoopLag:
    """Largest observed lateness of a periodic wake-up, in seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self.samples = 0
        self._due: float | None = None  # when the pending wake-up should happen

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, loop.time() - self._due)
            self.samples += 1

    def settle(self) -> None:
        """Count the pending wake-up too: a stall just before the block ends delays it, and
        cancelling the probe would otherwise drop exactly that measurement."""
        if self._due is not None:
            self.worst = max(self.worst, asyncio.get_running_loop().time() - self._due)


L = TypeVar("L", bound=LoopLag)


@contextlib.asynccontextmanager
async def probing(probe: L) -> AsyncIterator[L]:
    """Run ``probe`` on the running loop for the duration of the block; it then holds the worst stall."""
    task = asyncio.create_task(probe._run())
    try:
        yield probe
    finally:
        probe.settle()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def loop_lag(interval: float = 0.005) -> contextlib.AbstractAsyncContextManager[LoopLag]:
    """Probe the running loop for the duration of the block; the result holds the worst stall."""
    return probing(LoopLag(interval))
