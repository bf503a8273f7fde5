"""How the engine uses CPython's cyclic garbage collector, so that a big room never stalls the loop.

A collection holds the event loop for as long as it walks the objects of the generations it
collects: about 1 µs per object on the bench machine. A young collection walks a few thousand
objects; a full one walks the whole heap, and with 10,000 websocket viewers (~80 tracked objects
each) that is ~0.9 s with no event, tap or pong going out (bench/RESULTS.md, "Event fan-out").

The ``freeze`` policy (the default) keeps full collections small:

- after start-up it collects once and ``gc.freeze()``s what is left: imports, config, start-up
  state are never walked again;
- after every collection of the middle generation it freezes again. That collection has just
  freed every unreachable young object, so only live objects are frozen: whatever lives that long
  (connections, sessions, history) is never walked again, and the next full collection walks only
  what arrived since. Pauses are bounded by young collections whatever the size of the heap.

Frozen objects are still freed by reference counting when they die. Only a *cycle* among frozen
objects would outlive its use: websocket connections have none (signaling.channel._Connection
breaks the library's on close, which tests/engine/test_gc_policy.py checks), other parts (media
peers, HTTP requests) may have some. So when the node is idle (at most ``gc_thaw_below`` websocket
connections and media sessions) the policy thaws: it unfreezes, runs one full collection (a pause as long as the idle
heap is big) and freezes again, which bounds any such garbage to one busy period.

And it collects the youngest generation every ``gc_young_ms`` (see ``_collect_young``), so young
collections stay small too.

The ``default`` policy leaves CPython's collector as it is (for comparison in benches). Both
record every collection's pause in ``livecart_gc_pause_seconds`` and log a warning for the ones
of at least ``gc_warn_ms`` ms. The freeze policy's own full collections (at start-up and when
thawing an idle node) are expected to take that long and nobody waits on them: they are logged
at debug.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

POLICIES = ("freeze", "default")
IDLE_CHECK_SECONDS = 10.0

GC_PAUSE = Histogram(
    "livecart_gc_pause_seconds",
    "Time the cyclic garbage collector held the process, per collection",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
GC_FREEZES = Counter("livecart_gc_freezes_total", "gc.freeze() calls by the freeze policy, by reason", ["reason"])


class GcPolicy:
    """Installs a collector policy on this process; ``stop()`` restores CPython's own."""

    def __init__(self, policy: str, thaw_below: int = 0, warn_ms: float = 20.0, young_ms: float = 0.0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"gc policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.policy = policy
        self.thaw_below = thaw_below
        self.warn_seconds = warn_ms / 1000
        self.young_seconds = young_ms / 1000
        self._young: asyncio.TimerHandle | None = None
        self._connections: Callable[[], int] = lambda: 0
        self._started: float | None = None
        self._frozen_since_thaw = False
        self._timer: asyncio.TimerHandle | None = None
        self._own_full_collection = False

    @property
    def freezing(self) -> bool:
        return self.policy == "freeze"

    def start(self, connections: Callable[[], int]) -> None:
        """Apply the policy; with ``freeze``, freeze what start-up left and check idleness periodically.

        ``connections`` counts the open websocket connections and media sessions (the idleness test).
        """
        self._connections = connections
        gc.callbacks.append(self._on_gc)
        if self.freezing:
            self._collect_all()
            gc.freeze()
            GC_FREEZES.labels("start").inc()
            self._schedule()
            if self.young_seconds > 0:
                self._young = asyncio.get_running_loop().call_later(self.young_seconds, self._collect_young)

    def stop(self) -> None:
        """Remove the callback and unfreeze: the process is back to CPython's collector."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        for timer in (self._timer, self._young):
            if timer is not None:
                timer.cancel()
        self._timer = self._young = None
        if self.freezing:
            gc.unfreeze()

    def check_idle(self) -> bool:
        """Thaw (unfreeze, full collection, freeze) when the node is idle; True when it did.

        Nothing here may walk the frozen objects while the node is busy: even counting them
        (``gc.get_freeze_count()``) chases ~1 pointer per object, >100 ms with 10,000 viewers.
        """
        if not (self.freezing and self._frozen_since_thaw and self._connections() <= self.thaw_below):
            return False
        gc.unfreeze()
        self._collect_all()
        gc.freeze()
        self._frozen_since_thaw = False
        GC_FREEZES.labels("thaw").inc()
        return True

    def _collect_all(self) -> None:
        """A full collection of the policy's own (start-up, thaw), logged at debug, not as a stall."""
        self._own_full_collection = True
        try:
            gc.collect()
        finally:
            self._own_full_collection = False

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(IDLE_CHECK_SECONDS, self._tick)

    def _tick(self) -> None:
        self.check_idle()
        self._schedule()

    def _collect_young(self) -> None:
        """Collect the youngest generation on a clock, not only on CPython's allocation count.

        CPython collects when allocations minus deallocations pass a threshold; while old objects
        die (viewers leaving, history rolling over) that count stays low as tens of thousands of
        live young objects pile up, and the collection that finally comes walks them all at once.
        """
        gc.collect(0)
        self._young = asyncio.get_running_loop().call_later(self.young_seconds, self._collect_young)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:  # installed during a collection
            return
        pause = time.perf_counter() - self._started
        self._started = None
        generation = info["generation"]
        GC_PAUSE.labels(str(generation)).observe(pause)
        if self._own_full_collection:
            log.debug("gc: the policy's full collection (start-up or idle) held the loop %.1f ms (%d collected)",
                      pause * 1000, info["collected"])
        elif pause >= self.warn_seconds:
            log.warning("gc: a generation %d collection held the loop %.1f ms (%d collected)",
                        generation, pause * 1000, info["collected"])
        if self.freezing and generation >= 1:
            # Young generations were just emptied of garbage: everything left is alive.
            gc.freeze()
            self._frozen_since_thaw = True
            GC_FREEZES.labels("collection").inc()
