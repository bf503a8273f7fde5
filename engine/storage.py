"""SQLite storage for what the embedded default must keep across a restart.

One database file in the data directory, WAL mode. Three parts:
- `DataDirLock`: one serving process per data directory. Two processes selling from one file
  would each count stock in memory and oversell; the second one is refused at start.
- `Database`: the connection the commerce records and the purchase log write through. Its calls
  run on one worker thread, so a commit (an fsync, or a wait for a lock another process holds)
  never stalls the event loop; a lock not granted within the busy timeout, a full disk or an I/O
  error becomes the retryable `unavailable` error instead of a hang.
- `Storage`: the data directory's Database and the engine's settings (the secret, the admin key).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

from engine.errors import CodedError

T = TypeVar("T")

#: SQLite primary result codes that say "not now" rather than "never": a lock another connection
#: holds past the busy timeout, a full disk or database, an I/O error, a database opened read-only.
_RETRYABLE = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
})

DB_FILE = "livecart.db"


class StorageUnavailable(CodedError):
    """The database refused a call for now (locked, full, failing): nothing was written, retry."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class DataDirInUse(Exception):
    """Another process serves from this data directory."""


class DataDirLock:
    """An exclusive advisory lock (flock) on `livecart.lock` in the data directory, naming its
    holder's pid. The kernel drops it when the process dies, so a crash never leaves it stale."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "livecart.lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data directory {data_dir} is in use by another livecart process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _unavailable(exc: sqlite3.Error) -> StorageUnavailable | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _RETRYABLE:
        return StorageUnavailable(f"storage is unavailable ({exc}); nothing was written, retry")
    return None


class Database:
    """One SQLite connection (autocommit, WAL) owned by one worker thread.

    `read` and `write` are awaited on the event loop and run on that thread, one call at a time;
    `write` wraps its function in BEGIN IMMEDIATE ... COMMIT so all it does commits together or
    not at all. With `threaded=False` calls run inline instead (tests that drive the domain
    without a loop, tools that run before serving)."""

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 1.0, fsync: bool = False, threaded: bool = True
    ) -> None:
        self.path = path
        self._executor = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="livecart-db") if threaded else None
        )
        self._conn: sqlite3.Connection = self._call(lambda: self._open(busy_timeout, fsync))

    def _open(self, busy_timeout: float, fsync: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL survives a killed process; FULL adds power loss.
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        return conn

    def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            return fn()
        return self._executor.submit(fn).result()

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._conn)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) or exc from exc

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: the busy timeout applies here
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) or exc from exc
        return result

    async def _submit(self, call: Callable[[], T]) -> T:
        if self._executor is None:
            return call()
        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread finishes the call whatever happens to the caller. Wait for it, and if it
            # failed raise that failure rather than the cancellation: a caller that undoes its
            # in-memory changes when a write fails (a checkout returning units to the cart) must
            # learn that nothing was written.
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            error = future.exception()
            if error is not None:
                raise error from None
            raise

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the database thread (WAL: never waits for another writer)."""
        return await self._submit(lambda: self._read(fn))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one transaction on the database thread; StorageUnavailable if the
        write lock is not granted within the busy timeout or the commit fails for lack of room."""
        return await self._submit(lambda: self._write(fn))

    def now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` (autocommit) on the database thread, blocking the caller: for start-up
        (schema, first reads, settings), before anything is served."""
        return self._call(lambda: fn(self._conn))

    def close(self) -> None:
        self._call(self._conn.close)
        if self._executor is not None:
            self._executor.shutdown()


class Storage:
    """The process's database (`livecart.db` in the data directory) and the engine's settings:
    the secret and the admin key, read at start."""

    def __init__(self, data_dir: Path, *, busy_timeout: float = 1.0, fsync: bool = False) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_FILE
        self.db = Database(self.path, busy_timeout=busy_timeout, fsync=fsync)
        self.db.now(lambda conn: conn.execute(
            "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)"))

    def secret_setting(self, key: str) -> str:
        """A random secret kept under ``key``, created on first use (server secret, admin key)."""
        value = secrets.token_urlsafe(32)

        def get_or_create(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))
            return conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]

        return self.db.now(get_or_create)

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
