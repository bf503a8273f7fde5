"""In-process PurchaseLog: bounded (drops the oldest entries), lost on restart; for tests and demos
without a data directory."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any

from overlays.purchases.base import LogEntry, WakesReaders, check_limit, format_id, parse_id


class MemoryPurchaseLog(WakesReaders):
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: deque[tuple[int, tuple[str, str], dict[str, Any]]] = deque()
        self._seen: dict[tuple[str, str], int] = {}
        self._seq = 0

    async def append(self, event: Mapping[str, Any]) -> str:
        key = (event["source"], event["id"])
        seq = self._seen.get(key)
        if seq is not None:
            return format_id(seq)
        self._seq += 1
        self._entries.append((self._seq, key, dict(event)))
        self._seen[key] = self._seq
        while len(self._entries) > self.max_entries:
            _, old, _ = self._entries.popleft()
            del self._seen[old]
        self.appended()
        return format_id(self._seq)

    async def read(self, after: str | None = None, limit: int = 100) -> list[LogEntry]:
        after_seq, limit = parse_id(after), check_limit(limit)
        if not self._entries:
            return []
        start = max(0, after_seq - self._entries[0][0] + 1)  # seqs are contiguous
        return [
            LogEntry(format_id(seq), event)
            for seq, _, event in itertools.islice(self._entries, start, start + limit)
        ]

    async def last_id(self) -> str | None:
        return format_id(self._seq) if self._seq else None
