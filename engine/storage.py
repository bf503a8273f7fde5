"""SQLite storage for what the embedded default must keep across a restart.

One database file in the data directory, WAL mode, autocommit: every write is durable
when the call returns, which is what lets an order be acknowledged only after it is
committed (DESIGN.md, "Durability"). Domain modules create their own tables on the shared
connection; this module owns the engine's: settings (the secret, the admin key) and rooms.
"""

from __future__ import annotations

import secrets
import sqlite3
from contextlib import closing
from pathlib import Path

DB_FILE = "livecart.db"


class Storage:
    """The process's single SQLite connection (the engine runs one event loop thread)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_FILE
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS rooms (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
            " stream_key TEXT NOT NULL, created_at REAL NOT NULL)"
        )

    def secret_setting(self, key: str) -> str:
        """A random secret kept under ``key``, created on first use (server secret, admin key)."""
        value = secrets.token_urlsafe(32)
        self.db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))
        return self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()


def kept_setting(data_dir: Path, key: str) -> str:
    """The setting ``key`` a server keeps in ``data_dir``, read without creating anything.

    ``livecart token`` uses it: a secret made up where no server runs would sign tokens that
    the server refuses, so a missing database or setting is a LookupError saying where it looked.
    """
    path = (data_dir / DB_FILE).resolve()
    if not path.is_file():
        raise LookupError(f"no server data at {path}")
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error as exc:
        raise LookupError(f"cannot read {path}: {exc}") from None
    if row is None:
        raise LookupError(f"{path} keeps no {key} (the server was given one with its flags or environment)")
    return str(row[0])
