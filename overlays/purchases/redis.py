"""PurchaseLog on a Redis Stream, shared by every node on the same Redis and key prefix.

Ids. The log's ids are the stream's: entry N (a counter in the log's meta hash, drawn in the
same script that adds the entry) has the stream id ``0-N`` and the log id ``format_id(N)``. So
log ids are contiguous, increasing integers whichever node appended, exactly as in the memory
and SQLite logs: a websocket service reader resumes after the last id it saw on any node, and
a gap is still detected as "the oldest retained id is more than one past mine". External
consumers see the same numbers in the stream ids (``0-17`` is log id ``...017``).

Appends are one Lua script (``APPEND_LUA``, also run inside the record store's order script):
skip the event if its (source, id) is retained, else draw N, ``XADD`` it and trim the stream to
``max_entries`` exactly, forgetting the trimmed entries' (source, id). Exact trimming costs one
entry per append once full and keeps the dedupe index in step with the stream.

Keys (all under the ``{purchases}`` hash tag, so a Cluster keeps the stream, its index and the
orders written with it on one slot): ``P{purchases}:stream``, ``P{purchases}:meta`` (``seq``),
``P{purchases}:seen`` ((source, id) -> N).

Readers waiting for appends (``waiter()``) are woken by a background ``XREAD BLOCK`` on the
stream, so an order logged on another node wakes this node's subscriptions too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from engine.rediscalls import UNREACHABLE, redis_unavailable, stop_following
from overlays.purchases.base import LogEntry, WakesReaders, check_limit, format_id, parse_id

#: Lua: ``append(stream, meta, seen, bound, source, ce_id, type, body)`` -> N. Defines a local
#: function, so scripts that also write other keys (orders) can append in the same atomic call.
APPEND_LUA = """
local function append(stream, meta, seen, bound, source, ce_id, ce_type, body)
  local key = source .. '\\n' .. ce_id
  local known = redis.call('HGET', seen, key)
  if known then return tonumber(known) end
  local n = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('XADD', stream, '0-' .. n, 'type', ce_type, 'source', source, 'id', ce_id, 'event', body)
  redis.call('HSET', seen, key, n)
  local excess = redis.call('XLEN', stream) - bound
  if excess > 0 then
    for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)) do
      local fields, src, id = entry[2], nil, nil
      for i = 1, #fields, 2 do
        if fields[i] == 'source' then src = fields[i + 1] elseif fields[i] == 'id' then id = fields[i + 1] end
      end
      if src and id then redis.call('HDEL', seen, src .. '\\n' .. id) end
    end
    redis.call('XTRIM', stream, 'MAXLEN', bound)
  end
  return n
end
"""

_APPEND = APPEND_LUA + "return append(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5])"

WAIT_BLOCK_MS = 250  # one XREAD BLOCK of the wake task (it loops): how long stop() may wait
RETRY_SECONDS = 0.5  # between the wake task's attempts while Redis is away

log = logging.getLogger(__name__)


def stream_id(seq: int) -> str:
    return f"0-{seq}"


def log_keys(prefix: str) -> tuple[str, str, str]:
    """(stream, meta, seen) keys of the purchase log under ``prefix``."""
    return f"{prefix}{{purchases}}:stream", f"{prefix}{{purchases}}:meta", f"{prefix}{{purchases}}:seen"


def append_args(event: Mapping[str, Any], bound: int) -> list[Any]:
    """ARGV of APPEND_LUA's ``append`` for `event`."""
    return [bound, event["source"], event["id"], event["type"], orjson.dumps(event)]


class RedisPurchaseLog(WakesReaders):
    """The purchase stream; ``start()`` creates the services' consumer group and runs the wake task."""

    def __init__(self, client: Redis, prefix: str = "livecart:", max_entries: int = 1_000_000,
                 group: str = "services", waker: Redis | None = None) -> None:
        """`waker` is a client for the blocking reads of the wake task (its socket timeout must
        exceed WAIT_BLOCK_MS); without one no task runs and only this node's appends wake readers."""
        if max_entries < 1:
            raise ValueError("the purchase log must keep at least one entry")
        self.client = client
        self.prefix = prefix
        self.max_entries = max_entries
        self.group = group
        self.stream, self.meta, self.seen = log_keys(prefix)
        self._append = client.register_script(_APPEND)
        self._waker = waker
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Create the consumer group external services read with (from the oldest entry, so nothing
        appended before their first read is missed), and start following appends of other nodes."""
        with redis_unavailable():
            try:
                await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            last = await self.last_id()
        if self._waker is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._follow(stream_id(parse_id(last))), name="purchase-log-wake")

    async def stop(self) -> None:
        """Stop the wake task at the end of its current blocking read (cancelling redis-py inside a
        blocking read can leave the task waiting on a future nothing completes)."""
        self._stopping = True
        await stop_following(self._task)
        self._task = None

    async def _follow(self, last: str) -> None:
        """Wake readers whenever the stream grows, whoever appended. While Redis is away readers
        simply keep waiting; the next read after it returns picks up from `last`."""
        assert self._waker is not None
        away = False
        while not self._stopping:
            try:
                found = await self._waker.xread({self.stream: last}, count=100, block=WAIT_BLOCK_MS)
            except UNREACHABLE as exc:
                if not away:
                    log.warning("purchase stream: Redis is unavailable (%s); subscriptions wait for it", exc)
                away = True
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if away:
                log.warning("purchase stream: Redis answers again")
                away = False
            if found:
                last = found[0][1][-1][0].decode()
                self.appended()

    async def append(self, event: Mapping[str, Any]) -> str:
        with redis_unavailable():
            seq = await self._append(keys=[self.stream, self.meta, self.seen],
                                     args=append_args(event, self.max_entries))
        self.appended()
        return format_id(int(seq))

    async def read(self, after: str | None = None, limit: int = 100) -> list[LogEntry]:
        after_seq, limit = parse_id(after), check_limit(limit)
        start = f"({stream_id(after_seq)}" if after_seq else "-"
        with redis_unavailable():
            entries = await self.client.xrange(self.stream, start, "+", count=limit)
        return [LogEntry(format_id(int(entry_id.split(b"-")[1])), orjson.loads(fields[b"event"]))
                for entry_id, fields in entries]

    async def last_id(self) -> str | None:
        with redis_unavailable():
            seq = await self.client.hget(self.meta, "seq")
        return format_id(int(seq)) if seq else None
