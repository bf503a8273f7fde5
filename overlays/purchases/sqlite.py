"""SQLite PurchaseLog for the embedded default: each append is committed before it returns, so an
acknowledged order survives a SIGKILL. Retention keeps the newest `max_entries` rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from overlays.purchases.base import LogEntry, check_limit, format_id, parse_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS purchase_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    ce_id TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (source, ce_id)
)
"""


def open_db(path: str | Path) -> sqlite3.Connection:
    """WAL for concurrent readers; synchronous=FULL so a commit also survives power loss."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class SqlitePurchaseLog:
    """Takes an open connection (shared with the rest of the app's storage, which owns it) or a
    path (then this log opens and closes its own)."""

    def __init__(self, db: sqlite3.Connection | str | Path, max_entries: int = 1_000_000) -> None:
        self._owned = not isinstance(db, sqlite3.Connection)
        self._conn = open_db(db) if self._owned else db
        self.max_entries = max_entries
        with self._conn:
            self._conn.execute(_SCHEMA)

    def close(self) -> None:
        if self._owned:
            self._conn.close()

    async def append(self, event: Mapping[str, Any]) -> str:
        source, ce_id = event["source"], event["id"]
        with self._conn:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO purchase_log (source, ce_id, body) VALUES (?, ?, ?)",
                (source, ce_id, orjson.dumps(event)),
            )
            if cursor.rowcount == 0:
                (seq,) = self._conn.execute(
                    "SELECT seq FROM purchase_log WHERE source = ? AND ce_id = ?", (source, ce_id)
                ).fetchone()
                return format_id(seq)
            seq = cursor.lastrowid
            self._conn.execute("DELETE FROM purchase_log WHERE seq <= ?", (seq - self.max_entries,))
        return format_id(seq)

    async def read(self, after: str | None = None, limit: int = 100) -> list[LogEntry]:
        rows = self._conn.execute(
            "SELECT seq, body FROM purchase_log WHERE seq > ? ORDER BY seq LIMIT ?",
            (parse_id(after), check_limit(limit)),
        ).fetchall()
        return [LogEntry(format_id(seq), orjson.loads(body)) for seq, body in rows]

    async def last_id(self) -> str | None:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'purchase_log'").fetchone()
        return format_id(row[0]) if row else None
