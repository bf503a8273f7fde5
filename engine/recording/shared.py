"""Every node's recordings, known to every node (``--redis-url``).

A recording stays on the disk of the node that received its broadcast. Each node keeps the list of
its own recordings in one Redis hash, ``P{recordings}:node:ID`` (field ``room/recording``, value the
recording's listing entry as JSON, without its segment list), so any node can list a room's
recordings and find which node holds one. The hash is rewritten whole when this node's recordings
change (one starts or ends, is deleted, or retention removes some) and its running recordings'
entries are refreshed at every node heartbeat; the key expires with the node TTL unless refreshed,
and a node that stops cleanly deletes it.

Only the registry's live nodes are read: a recording whose node is gone is left out of listings
(its files cannot be fetched from anyone), and comes back when a node serving that recordings
directory starts again (it republishes its disk at start). The hash holds one entry per recording
kept on that node's disk, so it is bounded by the node's retention (``--recordings-max-bytes``,
``--recordings-max-age``).

The other nodes' entries are read at most once per refresh interval (``--node-heartbeat``): every
listing within it shares one read, so listings cost no Redis call however often the lobby polls,
and they are never staler than the node list they are read for. While Redis fails, listings hold
this node's recordings alone (logged once per outage) and a recording this node does not hold
cannot be located (``IndexUnavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.nodes.base import NodeInfo
from engine.recording.service import RecordingService
from engine.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: What an index entry keeps of a recording (what listings and the replay page show).
FIELDS = ("id", "room", "started_at", "duration", "bytes", "state", "reason", "featured")


def entry(info: dict[str, Any]) -> bytes:
    return orjson.dumps({name: info.get(name) for name in FIELDS})


class IndexUnavailable(Exception):
    """Redis did not answer: which node holds a recording is unknown for now."""


async def find(service: RecordingService, shared: SharedRecordings | None, room: str,
               recording_id: str) -> tuple[NodeInfo | None, dict[str, Any]] | None:
    """A recording here or on another live node: the node holding it (None for this one) and its
    entry (this node's own ``get``, or the other node's index entry); None if no live node holds it.
    The index is only read for a recording this node does not hold, so ``IndexUnavailable`` (while
    Redis fails) is only raised for one."""
    info = service.get(room, recording_id)
    if info is not None:
        return None, info
    return await shared.locate(room, recording_id) if shared is not None else None


class SharedRecordings:
    """This node's recordings published on Redis, and the other live nodes' read from it."""

    def __init__(self, client: Redis, prefix: str, node_id: str, service: RecordingService,
                 live_nodes: Callable[[], list[NodeInfo]], interval: float, ttl: float) -> None:
        """``live_nodes``: the registry's live nodes as last listed; ``interval`` (seconds between
        refreshes) shorter than ``ttl`` (seconds this node's hash outlives its last refresh)."""
        self._client = client
        self._prefix = prefix
        self.node_id = node_id
        self._service = service
        self._live_nodes = live_nodes
        self._interval = interval
        self._ttl_ms = max(1, round(ttl * 1000))
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._reads_failing = False
        # the other nodes' entries as last read, and when they are read again (time.monotonic())
        self._elsewhere: list[dict[str, Any]] = []
        self._elsewhere_until = 0.0
        self._elsewhere_lock = asyncio.Lock()
        service.on_change = self._changed.set

    def _key(self, node_id: str) -> str:
        return f"{self._prefix}{{recordings}}:node:{node_id}"

    async def start(self) -> None:
        self._changed.set()
        self._task = asyncio.create_task(self._run(), name="recordings-index")

    async def stop(self) -> None:
        """Stop refreshing and take this node's recordings out of listings (nobody could fetch them)."""
        await cancel_and_wait(self._task)
        try:
            await self._client.delete(self._key(self.node_id))
        except Exception as exc:
            log.warning("recordings index: could not remove this node's entries (%s); they lapse with the TTL", exc)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval)
            try:
                await self._publish()
            except Exception as exc:
                if not self._failing:
                    log.warning("recordings index: publishing failed (%s); retried every %.1f s", exc, self._interval)
                self._failing = True
                self._changed.set()  # a full rewrite once Redis answers again
                await asyncio.sleep(self._interval)
            else:
                self._failing = False

    async def _publish(self) -> None:
        """The whole hash after a change, else the running recordings' entries and the key's TTL."""
        key = self._key(self.node_id)
        full = self._changed.is_set()
        self._changed.clear()
        infos = await asyncio.to_thread(self._service.catalog if full else self._service.in_progress)
        mapping = {f"{info['room']}/{info['id']}": entry(info) for info in infos}
        async with self._client.pipeline(transaction=True) as pipe:
            if full:
                pipe.delete(key)
            if mapping:
                pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()

    def _others(self) -> list[NodeInfo]:
        return [node for node in self._live_nodes() if node.id != self.node_id]

    async def elsewhere(self) -> list[dict[str, Any]]:
        """Every recording the other live nodes hold, read at most once per refresh interval (one
        ``HGETALL`` per node, pipelined); none while Redis fails (listings show this node's own)."""
        async with self._elsewhere_lock:  # concurrent listings share one read
            if time.monotonic() >= self._elsewhere_until:
                self._elsewhere = await self._read_elsewhere()
                self._elsewhere_until = time.monotonic() + self._interval
            return self._elsewhere

    async def _read_elsewhere(self) -> list[dict[str, Any]]:
        nodes = self._others()
        if not nodes:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hgetall(self._key(node.id))
                hashes = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._read_failed(exc)
            return []
        self._read_answered()
        return [orjson.loads(raw) for found in hashes for raw in found.values()]

    async def locate(self, room: str, recording_id: str) -> tuple[NodeInfo, dict[str, Any]] | None:
        """The live node (other than this one) holding a recording, and its entry; None if none does.
        Raises ``IndexUnavailable`` while Redis fails."""
        nodes = self._others()
        if not nodes:
            return None
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hget(self._key(node.id), f"{room}/{recording_id}")
                found = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._read_failed(exc)
            raise IndexUnavailable(f"the recordings index (Redis) did not answer: {exc}") from None
        self._read_answered()
        return next(((node, orjson.loads(raw)) for node, raw in zip(nodes, found, strict=True) if raw), None)

    def _read_failed(self, exc: Exception) -> None:
        if not self._reads_failing:
            log.warning("recordings index: reading failed (%s); listings show this node's recordings only "
                        "until Redis answers", exc)
        self._reads_failing = True

    def _read_answered(self) -> None:
        if self._reads_failing:
            log.info("recordings index: reading answered again")
        self._reads_failing = False
