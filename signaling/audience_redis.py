"""A room's viewer count over every node sharing one Redis, so a room shows one figure.

Each node counts its own viewers of a room (signaling.audience) and keeps that count in Redis, in
the room's hash ``P{room}:viewers`` (node id -> count), with the time of its last write in
``P{room}:viewers:beats`` (node id -> milliseconds, Redis's own clock). A node writes when its
count changes (a short moment later, so a burst of joins is one write) and again every third of
the TTL while it has viewers there; a node that stops writing (it died) is dropped from the sum
once its last write is older than the TTL (``--node-ttl``), so its viewers disappear within it.

The sum is read by the same script that writes, every ``interval`` for the rooms whose clock this
node runs (engine.leases) or it has viewers of. Only that node publishes the room's ``viewers`` state value,
when the sum changes: one publisher per room, so an older sum read by one node never overwrites a
newer one published by another. Every node remembers the sums it read, for its snapshots and the
room listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# KEYS: counts, beats. ARGV: node id, its count ('' to read only), TTL in ms. Returns the sum.
_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
if ARGV[2] ~= '' then
  if tonumber(ARGV[2]) > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    redis.call('ZADD', KEYS[2], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
  end
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
end
local sum = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do sum = sum + tonumber(v) end
return sum
"""


class SharedViewers:
    """This node's viewer counts in Redis, and the rooms' sums read back (see the module doc).

    ``publish(room, count)`` sets the room's ``viewers`` state value; ``clocks()`` names the rooms
    whose clock this node runs (it publishes theirs). ``interval``: seconds between reads of those
    rooms' sums; ``ttl``: seconds a node's count outlives its last write; ``delay``: how long a
    change waits for others to go out in the same write."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        node_id: str,
        publish: Callable[[str, int], None],
        clocks: Callable[[], Iterable[str]],
        *,
        interval: float,
        ttl: float,
        delay: float = 0.05,
    ) -> None:
        if not 0 < interval < ttl:
            raise ValueError("--viewers-interval must be positive and shorter than --node-ttl")
        self._client, self._prefix, self.node_id = client, prefix, node_id
        self._publish, self._clocks = publish, clocks
        self.interval, self.ttl, self.delay = interval, ttl, delay
        self._sync = client.register_script(_SYNC)
        self._local: dict[str, int] = {}  # room -> this node's viewers (rooms with none are left out)
        self._dirty: set[str] = set()  # rooms whose count changed since it was written
        self._sums: dict[str, tuple[int, int]] = {}  # room -> (sum read, this node's count in it)
        self._published: dict[str, int] = {}  # room -> the sum this node published last (rooms it runs)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refreshed = 0.0  # monotonic time of the last write of every room with viewers
        self._failing = False

    def _keys(self, room: str) -> list[str]:
        base = f"{self._prefix}{{{room}}}:viewers"
        return [base, f"{base}:beats"]

    def changed(self, room: str, count: int) -> None:
        """The audience's hook: this node's viewers of ``room`` are now ``count``."""
        if count:
            self._local[room] = count
        else:
            self._local.pop(room, None)
        self._dirty.add(room)
        self._wake.set()

    def total(self, room: str) -> int:
        """The room's viewers on every node: the last sum read, moved by this node's changes since."""
        local = self._local.get(room, 0)
        read = self._sums.get(room)
        if read is None:
            return local
        return max(0, read[0] - read[1] + local)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shared-viewers")

    async def stop(self) -> None:
        """Stop, and take this node's counts out at once (others need not wait for the TTL)."""
        await cancel_and_wait(self._task)
        self._task = None
        self._dirty |= set(self._local)
        self._local.clear()
        try:
            await self.sync()
        except (RedisError, OSError) as exc:
            log.warning("node %s: its viewer counts could not be taken out (%s); they lapse with the TTL",
                        self.node_id, exc)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
                await asyncio.sleep(self.delay)  # a burst of joins goes out as one write
            self._wake.clear()
            try:
                await self.sync()
            except (RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("node %s: viewer counts cannot reach Redis (%s); retrying", self.node_id, exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("node %s: viewer counts reach Redis again", self.node_id)
                self._failing = False

    async def sync(self) -> None:
        """One round trip: write the counts that changed (and all of them when a refresh is due),
        read the sums of the rooms whose clock this node runs or it has viewers of (for its
        snapshots), publish those of the former that moved."""
        now = time.monotonic()
        writes = set(self._dirty)
        if now - self._refreshed >= self.ttl / 3:
            writes |= set(self._local)
            self._refreshed = now
        held = set(self._clocks())
        rooms = sorted(writes | held | set(self._local))
        if not rooms:
            return
        self._dirty -= writes
        counts = {room: self._local.get(room, 0) for room in writes}
        # What each sum read counts of this node: what it wrote, or wrote before and has not changed since.
        included = {room: self._local.get(room, 0) for room in rooms}
        ttl_ms = int(self.ttl * 1000)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    count = counts.get(room)
                    await self._sync(keys=self._keys(room), args=[self.node_id, "" if count is None else count, ttl_ms],
                                     client=pipe)
                sums = await pipe.execute()
        except BaseException:
            self._dirty |= writes  # written again at the next try
            raise
        for room, total in zip(rooms, sums, strict=True):
            self._sums[room] = (int(total), included[room])
            if room in held and self._published.get(room) != int(total):
                self._published[room] = int(total)
                self._publish(room, int(total))
        for room in list(self._published):
            if room not in held:  # another node runs it now, and publishes
                del self._published[room]
        for room in list(self._sums):
            if room not in held and room not in self._local and room not in self._dirty:
                del self._sums[room]  # nothing here reads it again: the sum would grow stale
