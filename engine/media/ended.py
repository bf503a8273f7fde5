"""Recently ended media sessions, so a late ``DELETE`` answers 200 instead of 404.

Browsers (and OBS-like clients) often close their peer connection before
they send ``DELETE``; the DTLS close already ended the session here, and a
404 would read as "this session never existed". Ended ids are kept for a
while, bounded by age and by count (oldest forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class RecentlyEnded:
    """Keys of ended sessions, each kept ``ttl`` seconds, at most ``limit`` of them."""

    def __init__(self, ttl: float, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._ended: OrderedDict[Hashable, float] = OrderedDict()

    def add(self, key: Hashable) -> None:
        if self.limit <= 0 or self.ttl <= 0:
            return
        self._ended[key] = self._clock() + self.ttl
        self._ended.move_to_end(key)
        self._expire()

    def __contains__(self, key: Hashable) -> bool:
        self._expire()
        return key in self._ended

    def __len__(self) -> int:
        self._expire()
        return len(self._ended)

    def _expire(self) -> None:
        now = self._clock()
        while self._ended and (len(self._ended) > self.limit or next(iter(self._ended.values())) <= now):
            self._ended.popitem(last=False)
