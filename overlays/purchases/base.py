"""The PurchaseLog interface: an append-only, bounded log of CloudEvents that other services read.

Ids are strings that increase with each append and sort as strings (zero-padded integers in the
memory and SQLite backends). Appends are idempotent on the envelope's (source, id), so a writer that
retries after a crash cannot log an order transition twice while the first copy is retained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from engine.digits import parse_uint
from overlays.events import DomainError

MAX_READ = 1000


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: str
    event: dict[str, Any]


def format_id(seq: int) -> str:
    return f"{seq:020d}"


def parse_id(log_id: str | None) -> int:
    """A resume position from a client: None means from the start."""
    if log_id is None:
        return 0
    position = parse_uint(log_id, 20)
    if position is None:
        raise DomainError("bad_request", "log ids are strings of up to 20 digits")
    return position


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_READ:
        raise DomainError("bad_request", f"limit must be in [1, {MAX_READ}]")
    return limit


class WakesReaders:
    """Wakes the readers waiting for new entries (the websocket subscriptions).

    A reader takes ``waiter()`` *before* it reads, so no append slips in between; the log calls
    ``appended()`` after every append, and so does a caller that wrote an entry inside its own
    transaction (the record store writing an order). A wake with nothing new is harmless."""

    _wake: asyncio.Event | None = None

    def waiter(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def appended(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()


class PurchaseLog(Protocol):
    async def append(self, event: Mapping[str, Any]) -> str:
        """Append a CloudEvents envelope, durably before returning; its log id. An envelope whose
        (source, id) is already retained is not added again: its first id is returned."""
        ...

    async def read(self, after: str | None = None, limit: int = 100) -> list[LogEntry]:
        """Up to `limit` entries with ids after `after`, oldest first. Entries past retention are
        gone: a reader too far behind resumes at the oldest retained entry."""
        ...

    async def last_id(self) -> str | None: ...

    def waiter(self) -> asyncio.Event:
        """Set at the next append (see WakesReaders)."""
        ...
