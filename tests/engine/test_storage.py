"""The database thread and the data-directory lock, on real SQLite files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from engine.storage import Database, DataDirInUse, DataDirLock, StorageUnavailable


async def test_a_write_is_all_or_nothing_and_a_foreign_lock_is_unavailable(tmp_path: Path) -> None:
    db = Database(tmp_path / "db", busy_timeout=0.2)
    db.now(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))

    def two_rows_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")
        raise ValueError("the second half failed")

    with pytest.raises(ValueError):
        await db.write(two_rows_then_fail)
    assert await db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 0

    blocker = sqlite3.connect(tmp_path / "db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StorageUnavailable) as refused:
        await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (3)"))
    assert refused.value.code == "unavailable" and refused.value.status == 503
    # Reads go on beside the foreign writer (WAL).
    assert await db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 0
    blocker.execute("ROLLBACK")
    await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (3)"))
    blocker.close()
    db.close()


async def test_a_cancelled_caller_learns_that_its_write_failed(tmp_path: Path) -> None:
    db = Database(tmp_path / "db", busy_timeout=0.3)
    db.now(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
    blocker = sqlite3.connect(tmp_path / "db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    task = asyncio.ensure_future(db.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)")))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(StorageUnavailable):  # not CancelledError: the caller must undo its changes
        await task
    blocker.execute("ROLLBACK")
    blocker.close()
    db.close()


def test_one_lock_holder_per_data_directory(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path)
    with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
        DataDirLock(tmp_path)
    lock.release()
    DataDirLock(tmp_path).release()
