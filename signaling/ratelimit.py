"""Token buckets: the flood guard for chat, taps and everything else, per user and per client address."""

from __future__ import annotations

from collections import OrderedDict

from engine.tokenbucket import TokenBucket


class BucketTable:
    """One token bucket per key (a client address), remembering at most ``max_keys`` keys.

    The least recently used key is forgotten first, so a flood of new addresses costs a bounded
    table; a forgotten key starts again with a full burst, which only the oldest keys can gain."""

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()

    def __len__(self) -> int:
        return len(self._buckets)


class UserLimits:
    """What all connections of one user share: how many are open, the message and action budgets."""

    __slots__ = ("connections", "messages", "actions")

    def __init__(self, rate: float, burst: int) -> None:
        self.connections = 0
        self.messages = TokenBucket(rate, burst)
        self.actions: dict[str, TokenBucket] = {}

    def take(self, action: str, rate: tuple[float, int]) -> bool:
        bucket = self.actions.get(action)
        if bucket is None:
            bucket = self.actions[action] = TokenBucket(*rate)
        return bucket.take()


class Users:
    """Per-user limits across connections (token ``sub``), bounded in memory.

    Users with an open connection are always kept (at most one per connection); a user's budgets
    outlive their last connection in a table of ``max_idle`` idle users, so reconnecting does not
    refill them, and the longest idle are forgotten first."""

    def __init__(self, max_per_user: int, rate: float, burst: int, max_idle: int) -> None:
        self.max_per_user = max_per_user
        self.rate = rate
        self.burst = burst
        self.max_idle = max_idle
        self._live: dict[str, UserLimits] = {}
        self._idle: OrderedDict[str, UserLimits] = OrderedDict()

    def acquire(self, user: str) -> UserLimits | None:
        """The user's limits with one more connection counted, or None when they have their maximum."""
        limits = self._live.get(user)
        if limits is not None and limits.connections >= self.max_per_user:
            return None
        if limits is None:
            limits = self._live[user] = self._idle.pop(user, None) or UserLimits(self.rate, self.burst)
        limits.connections += 1
        return limits

    def release(self, user: str) -> None:
        limits = self._live.get(user)
        if limits is None:
            return
        limits.connections -= 1
        if limits.connections <= 0:
            self._park(user, limits)

    def _park(self, user: str, limits: UserLimits) -> None:
        del self._live[user]
        self._idle[user] = limits
        if len(self._idle) > self.max_idle:
            self._idle.popitem(last=False)

    def sizes(self) -> tuple[int, int]:
        """How many users are remembered: (with a connection, idle)."""
        return len(self._live), len(self._idle)
