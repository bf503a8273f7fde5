"""This node's share of a set of leases: takes the free ones, renews the held ones, lets go of the rest.

The commerce runtime asks ``token(room)`` before a room's clock tick (no I/O: the grant's own
deadline answers) and ``confirm(room, token)`` before announcing what the tick did (one store
read, only when the tick did something), so a holder that lost its lease unnoticed, say paused
past the TTL, withholds what the new holder announces too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from engine.leases.base import Grant, Leases
from engine.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Lease calls in flight at once in a round: a node with many rooms takes them in batches, not
#: with one Redis connection per room.
BATCH = 32


async def _batched(calls: list[Awaitable[Grant | None]]) -> list[Grant | None | BaseException]:
    """The calls' outcomes in order, at most BATCH of them awaited at a time; failures as values."""
    results: list[Grant | None | BaseException] = []
    for start in range(0, len(calls), BATCH):
        results += await asyncio.gather(*calls[start:start + BATCH], return_exceptions=True)
    return results


class LeaseKeeper:
    """Holds, for ``holder``, every lease named by ``names()`` it can get, renewing each every third of ``ttl``.

    A lease another node holds is retried at each round, so it is taken over within about
    ``ttl + ttl / 3`` of its holder's last renewal."""

    def __init__(self, leases: Leases, holder: str, ttl: float, names: Callable[[], Iterable[str]]) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.leases = leases
        self.holder = holder
        self.ttl = ttl
        self._names = names
        self._grants: dict[str, Grant] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def token(self, name: str) -> int | None:
        """The fencing token of ``name`` while this node holds it by its own clock, else None."""
        grant = self._grants.get(name)
        return grant.token if grant is not None and grant.valid() else None

    def held(self) -> list[str]:
        """The names this node holds now, sorted."""
        return sorted(name for name, grant in self._grants.items() if grant.valid())

    async def confirm(self, name: str, token: int) -> bool:
        """Whether ``token`` is still the current holder's, by this node's clock and by the store.

        A store that cannot answer is taken as a no: work is withheld rather than doubled."""
        if self.token(name) != token:
            return False
        try:
            return await self.leases.token(name) == token
        except Exception as exc:
            log.warning("lease %s: its holder could not be confirmed (%s)", name, exc)
            return False

    async def start(self) -> None:
        """Take the leases once (a node alone runs its rooms' clocks from the start), then keep them."""
        await self.round()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-keeper")

    async def stop(self) -> None:
        """Stop renewing and release what is held, so another node takes over at once."""
        await cancel_and_wait(self._task)
        self._task = None
        grants, self._grants = list(self._grants.values()), {}
        results = await asyncio.gather(*(self.leases.release(g) for g in grants), return_exceptions=True)
        for grant, result in zip(grants, results, strict=True):
            if isinstance(result, Exception):
                log.warning("lease %s: not released (%s); it lapses with its TTL", grant.name, result)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.round()

    async def round(self) -> None:
        """One pass: release unwanted leases, renew held ones, try to take the others."""
        wanted = set(self._names())
        for name in [name for name in self._grants if name not in wanted]:
            await self._call(name, self.leases.release(self._grants.pop(name)))
        names = sorted(wanted)
        calls = [self.leases.renew(self._grants[name], self.ttl) if name in self._grants
                 else self.leases.acquire(name, self.holder, self.ttl) for name in names]
        results = await _batched(calls)
        lost = [name for name, result in zip(names, results, strict=True)
                if result is None and self._grants.pop(name, None) is not None]
        for name in lost:
            log.warning("lease %s: lost (it lapsed, or another node holds it now)", name)
        # A lease that lapsed (say while the store was away) may be free: try to take it again now.
        retried = await _batched([self.leases.acquire(name, self.holder, self.ttl) for name in lost])
        outcomes = dict(zip(names, results, strict=True)) | dict(zip(lost, retried, strict=True))
        failed = 0
        for name, result in outcomes.items():
            if isinstance(result, BaseException):
                failed += 1  # the grant, if any, stays until its own deadline: a blip does not drop it
            elif result is not None:
                if name not in self._grants:
                    log.info("lease %s: taken (token %d)", name, result.token)
                self._grants[name] = result
        self._report(failed, len(names), list(outcomes.values()))

    async def _call(self, name: str, call: Awaitable[bool]) -> None:
        try:
            await call
        except Exception as exc:
            log.warning("lease %s: not released (%s); it lapses with its TTL", name, exc)

    def _report(self, failed: int, total: int, results: list[object]) -> None:
        """Log the first failing round and the recovery, not every round in between."""
        if failed and not self._failing:
            reason = next(r for r in results if isinstance(r, BaseException))
            log.warning("leases: %d of %d calls failed (%s); held leases lapse at their deadline", failed, total,
                        reason)
        elif not failed and self._failing:
            log.info("leases: the store answers again")
        self._failing = bool(failed)
