"""The node registry in Redis: a sorted set of nodes by deadline, a key per node, a key per claimed publisher.

Keys (under the prefix):
- ``{nodes}``: sorted set, member the node id, score the deadline of its last heartbeat in ms by
  Redis's own clock (so nodes' clocks need not agree). Live nodes are a score range: no KEYS scan.
- ``{nodes}:node:ID``: the node's announcement (JSON), expiring with its TTL.
- ``room:{ROOM}:publisher``: the node holding the room's publisher, expiring with its TTL unless
  that node's heartbeats refresh it: a dead node's claims disappear by themselves.

The node keys share the ``{nodes}`` hash tag and each claim its room's, so every script stays on
one Cluster slot (the announcement keys a script reads are built from its key, same tag).
"""

from __future__ import annotations

import asyncio

import orjson
from redis.asyncio import Redis

from engine.nodes.base import NodeInfo

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_HEARTBEAT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('SET', KEYS[1] .. ':node:' .. ARGV[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

_NODES = _NOW + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local info = redis.call('GET', KEYS[1] .. ':node:' .. id)
  if info then
    table.insert(out, info)
  end
end
return out
"""

_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('DEL', KEYS[1] .. ':node:' .. ARGV[1])
"""

_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisNodeRegistry:
    """The nodes sharing one Redis and key prefix."""

    def __init__(self, client: Redis, prefix: str = "livecart:", ttl: float = 5.0) -> None:
        if ttl <= 0:
            raise ValueError("the node TTL must be positive")
        self.ttl = ttl
        self._client = client
        self._nodes_key = f"{prefix}{{nodes}}"
        self._prefix = prefix
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._nodes = client.register_script(_NODES)
        self._leave = client.register_script(_LEAVE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    def _claim_key(self, room: str) -> str:
        return f"{self._prefix}room:{{{room}}}:publisher"

    async def heartbeat(self, node: NodeInfo) -> list[str]:
        await self._heartbeat(keys=[self._nodes_key], args=[node.id, orjson.dumps(node.to_dict()), self._ttl_ms])
        holders = await asyncio.gather(*(self.claim(room, node.id) for room in node.publishers))
        return [room for room, holder in zip(node.publishers, holders, strict=True) if holder != node.id]

    async def nodes(self) -> list[NodeInfo]:
        infos = [NodeInfo.from_dict(orjson.loads(raw)) for raw in await self._nodes(keys=[self._nodes_key])]
        return sorted(infos, key=lambda info: info.id)

    async def leave(self, node: NodeInfo) -> None:
        await self._leave(keys=[self._nodes_key], args=[node.id])
        await asyncio.gather(*(self.release(room, node.id) for room in node.publishers))

    async def claim(self, room: str, node_id: str) -> str:
        holder = await self._claim(keys=[self._claim_key(room)], args=[node_id, self._ttl_ms])
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    async def release(self, room: str, node_id: str) -> bool:
        return bool(await self._release(keys=[self._claim_key(room)], args=[node_id]))

    async def publisher_node(self, room: str) -> str | None:
        holder = await self._client.get(self._claim_key(room))
        return None if holder is None else holder.decode()
