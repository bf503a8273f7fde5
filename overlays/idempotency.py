"""Remembered outcomes of idempotent requests (taps, checkouts): kept for a time, bounded per user.

A retry must find its first outcome for as long as what the request did lasts (a tap's hold
time), however busy the room is. So entries leave by age, and the only count bound is per user:
a user's own flood forgets only that user's oldest requests, never anyone else's.

Memory: at most `per_user` outcomes per user, only for users who made a request within the last
time-to-live, plus one expiry entry per request made within it (requests per user are rate
limited at the edge, so this is bounded by rate x time-to-live). Entries never leave early; when
callers pass times out of order, an entry may leave late (at the next pruning after its
predecessors).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

V = TypeVar("V")


class RequestMemory(Generic[V]):
    """Outcome per (user, request id) until a given time; `forget(now)` prunes."""

    __slots__ = ("per_user", "_users", "_expiry")

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._users: dict[str, dict[str, tuple[float, V]]] = {}  # insertion order: oldest first
        self._expiry: deque[tuple[float, str, str]] = deque()  # (until, user, request) as remembered

    def get(self, user: str, request: str) -> V | None:
        requests = self._users.get(user)
        if requests is None:
            return None
        found = requests.get(request)
        return None if found is None else found[1]

    def remember(self, user: str, request: str, value: V, until: float) -> None:
        """Keep `value` for (user, request) until `until`; past `per_user`, the user's oldest goes."""
        requests = self._users.get(user)
        if requests is None:  # a plain dict: the hot path creates one per new user, and it is cheap
            self._users[user] = {request: (until, value)}
        else:
            requests[request] = (until, value)
            if len(requests) > self.per_user:
                del requests[next(iter(requests))]
        self._expiry.append((until, user, request))

    def forget(self, now: float) -> None:
        """Drop the outcomes whose time is up (`until <= now`)."""
        expiry, users = self._expiry, self._users
        while expiry and expiry[0][0] <= now:
            until, user, request = expiry.popleft()
            requests = users.get(user)
            if requests is None:
                continue
            found = requests.get(request)
            if found is not None and found[0] == until:  # not evicted or remembered again since
                del requests[request]
                if not requests:
                    del users[user]

    def __len__(self) -> int:
        """Outcomes held (for tests and metrics; O(users))."""
        return sum(len(requests) for requests in self._users.values())

    @property
    def pending(self) -> int:
        """Expiry entries held (outcomes plus those already evicted by the per-user bound)."""
        return len(self._expiry)
