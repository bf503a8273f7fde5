"""RecordStore on Redis, shared by every node on the same Redis and key prefix.

Keys (P is the prefix, R the room):

- the catalog, pinned tags and sales of a room, under the room's hash tag so a Cluster keeps them on
  one slot: ``P{room:R}:products`` (hash id -> JSON) with ``P{room:R}:products:order`` (zset id ->
  place, drawn once from ``P{room:R}:seq``, so an update keeps its place), likewise ``tags`` and ``sales``;
- ``P{room:R}:revision``: a counter moved by every write of those three, so nodes that loaded the room
  notice a change another node made (``revisions``);
- orders, under the purchase log's ``{purchases}`` hash tag, because an order transition and its
  purchase-log entry are written by ONE Lua script and a script touches one slot:
  ``P{purchases}:orders:R`` (hash id -> JSON), ``:requests:R`` ((user, request id) -> order id),
  ``:placed:R`` (zset id -> placed_at; one more per status, ``:placed:R:STATUS``), ``:sold:R``
  ((pool, user) -> units in orders not cancelled), ``:totals:R`` (orders, units, revenue and
  order count per currency, not cancelled; ``recent``: the units of ``:recent:R``), ``:recent:R``
  (zset "id\\nunits" -> placed_at: the orders not cancelled that "N bought in the last minute"
  counts, at most ``max_recent``, pruned by ``figures``), ``:unlogged:R`` (id -> the last status
  logged, for orders whose current one is not).

``put_order`` is one script: it writes the order, its request-id index and the counters its lines
move, and appends the transition's CloudEvent to the purchase stream (overlays.purchases.redis).
Redis runs a script whole or not at all (and its AOF records it as one transaction), so an order
is never acknowledged without its log entry, and a retry (after a timeout that left the outcome
unknown) changes nothing twice: counters move only on a status change, the entry only once per
(source, id).

The room's sales figures (totals, and the units bought in the last window) are therefore the
deployment's, whichever node took each order: every node reads them with ``figures``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from redis.asyncio import Redis

from engine.rediscalls import redis_unavailable
from overlays.orders import CANCELLED, PAID, PLACED
from overlays.purchases.redis import APPEND_LUA, RedisPurchaseLog, append_args
from overlays.records.base import SalesFigures

STATUSES = (PLACED, PAID, CANCELLED)

_PUT_ITEM = """
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('INCR', KEYS[4])
"""

# KEYS: stream meta seen | orders requests placed sold totals unlogged | placed:S for S in STATUSES | recent
# ARGV: bound source ce_id ce_type event | id body user request_id status logged placed_at quantity
#       total currency max_recent | pool, units per line
_PUT_ORDER = APPEND_LUA + """
local id, body, user, status, logged = ARGV[6], ARGV[7], ARGV[8], ARGV[10], ARGV[11]
local placed_at, quantity, total, currency = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14]), ARGV[15]
local by_status = {}
for i, s in ipairs({'placed', 'paid', 'cancelled'}) do by_status[s] = KEYS[9 + i] end  -- STATUSES, in order
local old = redis.call('HGET', KEYS[4], id)
local before = nil
if old then before = cjson.decode(old)['status'] end
redis.call('HSET', KEYS[4], id, body)
if not old then
  redis.call('HSET', KEYS[5], user .. '\\n' .. ARGV[9], id)
  redis.call('ZADD', KEYS[6], placed_at, id)
end
if before ~= status then
  if before then redis.call('ZREM', by_status[before], id) end
  redis.call('ZADD', by_status[status], placed_at, id)
end
local delta = 0
local counted_before = before ~= nil and before ~= 'cancelled'
local counted_after = status ~= 'cancelled'
if counted_after and not counted_before then delta = 1 elseif counted_before and not counted_after then delta = -1 end
if delta ~= 0 then
  for i = 17, #ARGV, 2 do
    local field = ARGV[i] .. '\\n' .. user
    if redis.call('HINCRBY', KEYS[7], field, delta * tonumber(ARGV[i + 1])) <= 0 then
      redis.call('HDEL', KEYS[7], field)
    end
  end
  redis.call('HINCRBY', KEYS[8], 'orders', delta)
  redis.call('HINCRBY', KEYS[8], 'units', delta * quantity)
  redis.call('HINCRBY', KEYS[8], 'revenue:' .. currency, delta * total)
  if redis.call('HINCRBY', KEYS[8], 'count:' .. currency, delta) <= 0 then
    redis.call('HDEL', KEYS[8], 'revenue:' .. currency, 'count:' .. currency)
  end
  local recent, member = KEYS[13], id .. '\\n' .. quantity
  if delta > 0 then
    redis.call('ZADD', recent, placed_at, member)
    redis.call('HINCRBY', KEYS[8], 'recent', quantity)
    if redis.call('ZCARD', recent) > tonumber(ARGV[16]) then  -- the oldest leave first
      local oldest = redis.call('ZPOPMIN', recent)
      redis.call('HINCRBY', KEYS[8], 'recent', -tonumber(string.match(oldest[1], '\\n(%d+)$')))
    end
  elseif redis.call('ZREM', recent, member) == 1 then
    redis.call('HINCRBY', KEYS[8], 'recent', -quantity)
  end
end
local n = append(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if logged == status then redis.call('HDEL', KEYS[9], id) else redis.call('HSET', KEYS[9], id, logged) end
return n
"""


# KEYS: totals recent. ARGV: the window's start (orders placed at or before it leave).
# Returns the totals hash, flattened.
_FIGURES = """
local gone = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  gone = gone + tonumber(string.match(member, '\\n(%d+)$'))
end
if gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'recent', -gone)
end
return redis.call('HGETALL', KEYS[1])
"""


class RedisRecords:
    """RecordStore on `log`'s Redis client, appending order transitions to `log`'s stream.

    `max_recent` bounds the orders kept for "N bought in the last minute" per room (the shop's
    `recent_orders`): past it the oldest leave the count first."""

    def __init__(self, log: RedisPurchaseLog, max_recent: int = 10_000) -> None:
        if max_recent < 1:
            raise ValueError("max_recent must be at least 1")
        self.log = log
        self.max_recent = max_recent
        self._client: Redis = log.client
        self._prefix = log.prefix
        self._put_item = self._client.register_script(_PUT_ITEM)
        self._put_order = self._client.register_script(_PUT_ORDER)
        self._figures = self._client.register_script(_FIGURES)

    # -- catalog, tags, sales ---------------------------------------------------------------------

    def _room_keys(self, kind: str, room: str) -> tuple[str, str, str]:
        base = f"{self._prefix}{{room:{room}}}"
        return f"{base}:{kind}", f"{base}:{kind}:order", f"{base}:seq"

    def _revision_key(self, room: str) -> str:
        return f"{self._prefix}{{room:{room}}}:revision"

    async def _put(self, kind: str, room: str, item: dict[str, Any]) -> None:
        keys = [*self._room_keys(kind, room), self._revision_key(room)]
        with redis_unavailable():
            await self._put_item(keys=keys, args=[item["id"], orjson.dumps(item)])

    async def _delete(self, kind: str, room: str, item_id: str) -> None:
        items, order, _ = self._room_keys(kind, room)
        with redis_unavailable():
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.hdel(items, item_id).zrem(order, item_id).incr(self._revision_key(room)).execute()

    async def revisions(self, rooms: list[str]) -> list[int]:
        """Each room's revision: a counter every write of its catalog, tags or sales moves (in
        the same step as the write), so a node sees in one round trip which rooms' offer changed."""
        with redis_unavailable():
            async with self._client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.get(self._revision_key(room))
                values = await pipe.execute()
        return [int(value or 0) for value in values]

    async def _items(self, kind: str, room: str) -> list[dict[str, Any]]:
        items, order, _ = self._room_keys(kind, room)
        with redis_unavailable():
            async with self._client.pipeline(transaction=True) as pipe:
                ids, bodies = await pipe.zrange(order, 0, -1).hgetall(items).execute()
        return [orjson.loads(bodies[item_id]) for item_id in ids if item_id in bodies]

    async def put_product(self, room: str, product: dict[str, Any]) -> None:
        await self._put("products", room, product)

    async def delete_product(self, room: str, product_id: str) -> None:
        await self._delete("products", room, product_id)

    async def products(self, room: str) -> list[dict[str, Any]]:
        return await self._items("products", room)

    async def put_tag(self, room: str, tag: dict[str, Any]) -> None:
        await self._put("tags", room, tag)

    async def delete_tag(self, room: str, tag_id: str) -> None:
        await self._delete("tags", room, tag_id)

    async def tags(self, room: str) -> list[dict[str, Any]]:
        return await self._items("tags", room)

    async def put_sale(self, room: str, sale: dict[str, Any]) -> None:
        await self._put("sales", room, sale)

    async def delete_sale(self, room: str, sale_id: str) -> None:
        await self._delete("sales", room, sale_id)

    async def sales(self, room: str) -> list[dict[str, Any]]:
        return await self._items("sales", room)

    # -- orders -----------------------------------------------------------------------------------

    def _order_key(self, kind: str, room: str) -> str:
        return f"{self._prefix}{{purchases}}:{kind}:{room}"

    async def put_order(self, order: dict[str, Any], event: Mapping[str, Any]) -> None:
        room = order["room"]
        keys = [self.log.stream, self.log.meta, self.log.seen,
                *(self._order_key(kind, room) for kind in ("orders", "requests", "placed", "sold", "totals",
                                                          "unlogged")),
                *(f"{self._order_key('placed', room)}:{status}" for status in STATUSES),
                self._order_key("recent", room)]
        args: list[Any] = [
            *append_args(event, self.log.max_entries),
            order["id"], orjson.dumps(order), order["user"], order["request_id"], order["status"],
            event["data"]["status"], repr(float(order["placed_at"])), order["quantity"], order["total"],
            order["currency"], self.max_recent,
        ]
        for line in order["lines"]:
            args += [line["pool"], line["quantity"]]
        with redis_unavailable():
            await self._put_order(keys=keys, args=args)
        self.log.appended()

    async def order(self, room: str, order_id: str) -> dict[str, Any] | None:
        with redis_unavailable():
            body = await self._client.hget(self._order_key("orders", room), order_id)
        return None if body is None else orjson.loads(body)

    async def order_for_request(self, room: str, user: str, request_id: str) -> dict[str, Any] | None:
        with redis_unavailable():
            order_id = await self._client.hget(self._order_key("requests", room), f"{user}\n{request_id}")
        return None if order_id is None else await self.order(room, order_id.decode())

    async def _bodies(self, room: str, ids: list[bytes]) -> list[dict[str, Any]]:
        if not ids:
            return []
        with redis_unavailable():
            bodies = await self._client.hmget(self._order_key("orders", room), ids)
        return [orjson.loads(body) for body in bodies if body is not None]

    async def orders(self, room: str, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        key = self._order_key("placed", room) + ("" if status is None else f":{status}")
        if status is not None and status not in STATUSES:
            return []
        with redis_unavailable():
            ids = await self._client.zrange(key, "+inf", "-inf", desc=True, byscore=True, offset=offset, num=limit)
        return await self._bodies(room, ids)

    async def unlogged_orders(self, room: str) -> list[tuple[dict[str, Any], str | None]]:
        """Orders put with an event of another status than their own (the shop never does: every
        transition is put with its own event, in one script)."""
        with redis_unavailable():
            logged = await self._client.hgetall(self._order_key("unlogged", room))
        orders = sorted(await self._bodies(room, list(logged)), key=lambda order: order["placed_at"])
        return [(order, logged[order["id"].encode()].decode()) for order in orders]

    async def sold(self, room: str) -> dict[str, dict[str, int]]:
        with redis_unavailable():
            counts = await self._client.hgetall(self._order_key("sold", room))
        sold: dict[str, dict[str, int]] = {}
        for field, units in counts.items():
            pool, user = field.decode().split("\n", 1)
            sold.setdefault(pool, {})[user] = int(units)
        return sold

    async def totals(self, room: str) -> tuple[int, int, dict[str, int]]:
        with redis_unavailable():
            raw = await self._client.hgetall(self._order_key("totals", room))
        orders, units, revenue, _ = _figures(raw)
        return orders, units, revenue

    async def figures(self, rooms: list[str], since: float) -> list[SalesFigures]:
        """Each room's totals and the units of its orders placed after `since`, in one round trip
        (older ones leave the count here, whichever node reads first)."""
        with redis_unavailable():
            async with self._client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    await self._figures(keys=[self._order_key("totals", room), self._order_key("recent", room)],
                                        args=[repr(float(since))], client=pipe)
                replies = await pipe.execute()
        return [_figures(dict(zip(reply[::2], reply[1::2], strict=True))) for reply in replies]


def _figures(raw: Mapping[bytes, bytes]) -> SalesFigures:
    fields = {name.decode(): int(value) for name, value in raw.items()}
    revenue = {name[8:]: value for name, value in fields.items() if name.startswith("revenue:")}
    return SalesFigures(fields.get("orders", 0), fields.get("units", 0), revenue, fields.get("recent", 0))
