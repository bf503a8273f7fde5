"""Redis calls as the engine's errors: a Redis that is down, restarting (loading its AOF) or too slow
to answer within the client's socket timeout becomes the retryable ``unavailable`` error
(engine.storage.StorageUnavailable), the same answer a locked or full SQLite gives.

A call that timed out may still have run on the server: callers that write keep their scripts
idempotent (a retry with the same request id or CloudEvents id changes nothing twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.storage import StorageUnavailable

#: What a call to a Redis that is away raises (BusyLoadingError, a restart reading its AOF, is a ConnectionError).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


@contextlib.contextmanager
def redis_unavailable() -> Iterator[None]:
    """Turn an unreachable or slow Redis into StorageUnavailable for the block's calls."""
    try:
        yield
    except UNREACHABLE as exc:
        raise StorageUnavailable(f"Redis is unavailable ({exc}); retry") from exc


def redacted(url: str) -> str:
    """``url`` fit for an error message or a log: its password (``redis://:PASSWORD@...``, or a
    user's) replaced by ``***``, the rest (scheme, host, port, database, TLS options) kept."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisUnreachable(ValueError):
    """Redis did not answer while the engine started: reported like a refused setting (one line
    naming --redis-url), since nothing can be served without it."""


@contextlib.contextmanager
def redis_at_start(url: str) -> Iterator[None]:
    """Start-up calls to Redis: an unreachable one is RedisUnreachable."""
    try:
        yield
    except UNREACHABLE as exc:
        raise RedisUnreachable(f"cannot reach Redis at {redacted(url)} (--redis-url): {exc}") from None


#: Seconds stopping waits for a task that follows Redis (a blocking read or a pub/sub channel).
STOP_WAIT = 5.0


async def stop_following(task: asyncio.Task[None] | None) -> None:
    """Stop a task that follows Redis once it has noticed its stop flag, at the end of its current
    wait: cancelling redis-py inside a blocking read can leave the task waiting on a future nothing
    completes. A call that outlived every timeout is given up rather than hang the stop."""
    if task is None:
        return
    done, _ = await asyncio.wait({task}, timeout=STOP_WAIT)
    if not done:
        task.cancel()
