"""The token bucket: the engine's one rate limiter.

Client messages, chat and taps per user, guest tokens per address, trickle ``PATCH`` requests per
media session and retransmissions per viewer all draw from one. ``take`` is O(1) and
allocation-free because it runs for every websocket message a client sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (a full bucket to start)."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> float:
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return tokens

    def take(self) -> bool:
        """Take one token, if there is one."""
        tokens = self._refill()
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def take_up_to(self, wanted: int) -> int:
        """Take up to ``wanted`` whole tokens; returns how many were granted."""
        tokens = self._refill()
        granted = max(0, min(wanted, int(tokens)))
        self.tokens = tokens - granted
        return granted
