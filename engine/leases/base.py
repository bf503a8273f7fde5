"""The lease interface: acquire, renew and release a named lease with a TTL and a fencing token.

A lease is held by one holder (a node id) until its TTL runs out unless renewed. Every new
holder gets a fencing token larger than any earlier holder's, so a holder that lost its lease
(it paused past the TTL, or its renewals did not arrive) can be recognised by its older token
and its late work refused (Kleppmann, "How to do distributed locking").

The holder's own clock bounds how long it may act: a grant is valid until the TTL measured
from *before* the request was sent, minus a drift allowance, so it stops before the store can
hand the lease to anyone else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

#: Clock drift allowed between a holder and the store: 1 % of the TTL plus 2 ms (as Redlock).
DRIFT_FRACTION = 0.01
DRIFT_FLOOR = 0.002


def valid_until(started: float, ttl: float) -> float:
    """The monotonic time until which a grant obtained by a request sent at ``started`` may be used."""
    return started + ttl - (ttl * DRIFT_FRACTION + DRIFT_FLOOR)


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease held: its name, holder, fencing token and the holder's deadline (``time.monotonic()``)."""

    name: str
    holder: str
    token: int
    valid_until: float

    def valid(self, now: float | None = None) -> bool:
        """Whether the holder may still act on it by its own clock."""
        return (time.monotonic() if now is None else now) < self.valid_until


class Leases(Protocol):
    """Named leases shared by every node of a deployment."""

    async def acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        """The lease for ``holder`` (a new, larger token), or None while another holds it.

        A holder that still holds it gets it back with its token unchanged and its TTL restarted."""
        ...

    async def renew(self, grant: Grant, ttl: float) -> Grant | None:
        """The grant with its TTL restarted, or None if it is no longer held under this token."""
        ...

    async def release(self, grant: Grant) -> bool:
        """Give the lease up; False if it was no longer held under this token (nothing is changed)."""
        ...

    async def token(self, name: str) -> int | None:
        """The fencing token of the lease's current holder, or None while nobody holds it."""
        ...
