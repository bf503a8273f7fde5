"""SQLite storage for what the embedded default must keep across a restart.

One database file in the data directory, WAL mode, autocommit: every write is durable
when the call returns, which is what lets an order be acknowledged only after it is
committed (DESIGN.md, "Durability"). Domain modules create their own tables on the shared
connection; this module owns the engine's: settings (the secret, the admin key) and rooms.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path


class Storage:
    """The process's single SQLite connection (the engine runs one event loop thread)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "livecart.db"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS rooms (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
            " stream_key TEXT NOT NULL, created_at REAL NOT NULL, private INTEGER NOT NULL DEFAULT 0)"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(rooms)")}
        if "private" not in columns:  # a data directory from before private rooms
            self.db.execute("ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0")

    def secret_setting(self, key: str) -> str:
        """A random secret kept under ``key``, created on first use (server secret, admin key)."""
        value = secrets.token_urlsafe(32)
        self.db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))
        return self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()
