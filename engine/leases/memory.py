"""Leases of one process: a dict of holders with deadlines and a token counter per name.

With one node there is one holder, so its leases are always granted; the semantics are the
same as Redis's (TTL, tokens, refusals) so the contract suite runs unchanged against both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.leases.base import Grant, valid_until


@dataclass(slots=True)
class _Held:
    holder: str
    token: int
    expires: float


class MemoryLeases:
    """In-process leases on the monotonic clock. Holds one entry and one counter per name ever
    leased (the counter must outlive releases so tokens keep growing): bounded by the rooms."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._tokens: dict[str, int] = {}

    def _live(self, name: str, now: float) -> _Held | None:
        held = self._held.get(name)
        if held is not None and held.expires <= now:
            del self._held[name]
            return None
        return held

    async def acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        now = time.monotonic()
        held = self._live(name, now)
        if held is not None and held.holder != holder:
            return None
        if held is None:
            token = self._tokens.get(name, 0) + 1
            self._tokens[name] = token
            held = self._held[name] = _Held(holder, token, now + ttl)
        else:
            held.expires = now + ttl
        return Grant(name, holder, held.token, valid_until(now, ttl))

    async def renew(self, grant: Grant, ttl: float) -> Grant | None:
        now = time.monotonic()
        held = self._live(grant.name, now)
        if held is None or held.token != grant.token or held.holder != grant.holder:
            return None
        held.expires = now + ttl
        return Grant(grant.name, grant.holder, grant.token, valid_until(now, ttl))

    async def release(self, grant: Grant) -> bool:
        held = self._live(grant.name, time.monotonic())
        if held is None or held.token != grant.token or held.holder != grant.holder:
            return False
        del self._held[grant.name]
        return True

    async def token(self, name: str) -> int | None:
        held = self._live(name, time.monotonic())
        return None if held is None else held.token
