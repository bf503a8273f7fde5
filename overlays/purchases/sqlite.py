"""SQLite PurchaseLog for the embedded default. Entries are written by `append_in`, inside the
transaction of the caller that also writes the order (the record store), so an acknowledged order
and its log entry commit together; `append` is the same on its own. Retention keeps the newest
`max_entries` rows. Calls run on the database's thread (engine.storage.Database)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from engine.storage import Database
from overlays.purchases.base import LogEntry, WakesReaders, check_limit, format_id, parse_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS purchase_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    ce_id TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (source, ce_id)
)
"""


class SqlitePurchaseLog(WakesReaders):
    """Takes an open Database (shared with the rest of the app's storage, which owns it) or a
    path (then this log opens and closes its own)."""

    def __init__(self, db: Database | str | Path, max_entries: int = 1_000_000) -> None:
        self._owned = not isinstance(db, Database)
        self.db = Database(db) if not isinstance(db, Database) else db
        self.max_entries = max_entries
        self.db.now(lambda conn: conn.executescript(_SCHEMA))

    def close(self) -> None:
        if self._owned:
            self.db.close()

    def append_in(self, conn: sqlite3.Connection, event: Mapping[str, Any]) -> str:
        """Append within the caller's open transaction on `conn` (idempotent on source and id);
        the caller calls `appended()` once that transaction has committed."""
        source, ce_id = event["source"], event["id"]
        # Look first: an INSERT OR IGNORE that is ignored still draws an AUTOINCREMENT number, and
        # that gap would read as entries lost to retention for a reader resuming across it.
        known = conn.execute(
            "SELECT seq FROM purchase_log WHERE source = ? AND ce_id = ?", (source, ce_id)
        ).fetchone()
        if known is not None:
            return format_id(known[0])
        cursor = conn.execute(
            "INSERT INTO purchase_log (source, ce_id, body) VALUES (?, ?, ?)", (source, ce_id, orjson.dumps(event))
        )
        seq = cursor.lastrowid
        conn.execute("DELETE FROM purchase_log WHERE seq <= ?", (seq - self.max_entries,))
        return format_id(seq)

    async def append(self, event: Mapping[str, Any]) -> str:
        log_id = await self.db.write(lambda conn: self.append_in(conn, event))
        self.appended()
        return log_id

    async def read(self, after: str | None = None, limit: int = 100) -> list[LogEntry]:
        after_seq, limit = parse_id(after), check_limit(limit)
        rows = await self.db.read(lambda conn: conn.execute(
            "SELECT seq, body FROM purchase_log WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall())
        return [LogEntry(format_id(seq), orjson.loads(body)) for seq, body in rows]

    async def last_id(self) -> str | None:
        row = await self.db.read(lambda conn: conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'purchase_log'"
        ).fetchone())
        return format_id(row[0]) if row else None
