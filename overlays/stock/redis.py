"""StockStore on Redis: every node of a deployment counts the same units.

Each method is one Lua script, run atomically by Redis and called by EVALSHA (the scripts are
loaded when the store starts, and loaded again, once for all callers, when Redis answers NOSCRIPT,
e.g. after a restart: engine.redisbatch): a tap is one round trip whatever the number of nodes
tapping, and no two nodes can interleave inside one.

Upgrading from a version that kept the per-user request order in sorted sets (`reqo:<user>`):
stop the old nodes before the new ones start; their `reqo:*` keys are no longer read and may be
deleted.

Keys, all under ``{prefix}{{room}}:`` so one room's keys share a Redis Cluster slot (the room id
is the hash tag; room ids hold no braces):
  pool:<pool>     hash  quantity, reserved, sold, version; out ("1" while announced as having no unit
                  left, see `turn`); closed (the refusal's message once closed to taps)
  held:<pool>     hash  user -> units held (reserved + sold), which a per-user limit bounds
  res             hash  reservation id -> [pool, user, qty, expires_at, unit_amount] (JSON)
  cart:<user>     zset  reservation ids in the order they entered the cart
  expiry          zset  reservation id by expires_at
  req:<user>      hash  request id -> the first reserve result (JSON)
  reql:<user>     list  that user's request ids, oldest first (the per-user bound drops these first)
  reqx            zset  "user\\nrequest" by the time the result stops being remembered
  ck:<user>       hash  the user's last commit made with a request id: request, lines (for a retry)
  ckx             zset  users with a remembered commit, by the end of its lines' hold
  seq             string  the room's counter: reservation ids and cart order
Scripts name the room's keys they always touch in KEYS and derive the per-pool and per-user ones
from the room's key base, which lies in the same slot.

Times (expires_at, now) travel as the decimal text of Python floats and are compared by Redis as
doubles, so they come back bit for bit. Expiry runs with the clock of whichever node calls
`expire`; a reservation leaves the `expiry` set in the same script that returns its units, so
nodes expiring at once return each unit exactly once.

A Redis that does not answer within the socket timeout (refused, restarting, unreachable) makes
the call raise StorageUnavailable (code ``unavailable``): the caller answers a clear error, never
hangs, and a retry with the same request id finds the first outcome if the script did run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.redisbatch import RedisBatcher
from engine.storage import StorageUnavailable
from overlays.events import DomainError
from overlays.stock.base import Counters, Reservation, ReserveResult, Returned

#: Expired reservations one expire script returns at most: expiry is split into several short
#: scripts rather than one that holds Redis for as long as a whole room takes.
EXPIRE_BATCH = 500

# Helpers the scripts share, each script taking only those it calls: Redis runs a script's whole
# text at every call, and each function defined there is a closure made again each time. `base` is
# the room's key base ("{prefix}{room}:"), ARGV[1] of the scripts that derive keys from it.
_BASE = r"""
local base = ARGV[1]
"""
_COUNTERS_LIB = r"""
local function counters(pkey)
  local c = redis.call('HMGET', pkey, 'quantity', 'reserved', 'sold', 'version')
  return {tonumber(c[1]), tonumber(c[2]), tonumber(c[3]), tonumber(c[4])}
end
local function figures(c)
  return {c[1], c[1] - c[2] - c[3], c[2], c[3], c[4]}
end
"""
# Whether the pool's availability, now `available`, moved to 0 (1), back from 0 (-1) or neither (0)
# since the last call that said so, given the pool's `out` field as read: `turned` decides, and the
# caller stores the new `out` in the same step, so each transition is reported to exactly one caller
# of all nodes. `turn` reads and writes the field itself (the reserve script has it read already).
_TURNED_LIB = r"""
local function turned(available, out)
  if available == 0 and out ~= '1' then return 1 elseif available > 0 and out == '1' then return -1 end
  return 0
end
"""
_TURN_LIB = _TURNED_LIB + r"""
local function turn(pkey, available)
  local t = turned(available, redis.call('HGET', pkey, 'out'))
  if t ~= 0 then redis.call('HSET', pkey, 'out', t == 1 and '1' or '0') end
  return t
end
"""
_HELD_LIB = r"""
local function add_held(pool, user, delta)
  local hkey = base .. 'held:' .. pool
  if redis.call('HINCRBY', hkey, user, delta) <= 0 then redis.call('HDEL', hkey, user) end
end
"""
# Remove a live reservation and give its units back: {id, record, available, version, turned}.
_UNHOLD_LIB = _COUNTERS_LIB + _TURN_LIB + _HELD_LIB + r"""
local function unhold(id, rec)
  local r = cjson.decode(rec)
  local pool, user, qty = r[1], r[2], tonumber(r[3])
  redis.call('HDEL', base .. 'res', id)
  redis.call('ZREM', base .. 'cart:' .. user, id)
  redis.call('ZREM', base .. 'expiry', id)
  local pkey = base .. 'pool:' .. pool
  redis.call('HINCRBY', pkey, 'reserved', -qty)
  redis.call('HINCRBY', pkey, 'version', 1)
  add_held(pool, user, -qty)
  local c = counters(pkey)
  local available = c[1] - c[2] - c[3]
  return {id, rec, available, c[4], turn(pkey, available)}
end
"""
# What a tap's scripts share. remember: keep a request's first result until expires_at, at most
# `bound` per user, oldest dropped first (the per-user list keeps arrival order, and the push
# answers its length); a dropped one also leaves `reqx`, so expiry never looks for it.
# with_totals: append the quantity and total of the user's cart lines unexpired at `now` to a
# reply whose result holds a reservation (a tap's answer shows them); nothing for a refusal, or
# without `now`.
_TAP_LIB = r"""
local function remember(req, reql, reqx, user, request, encoded, expires_at, bound)
  redis.call('HSET', req, request, encoded)
  redis.call('ZADD', reqx, expires_at, user .. '\n' .. request)
  if redis.call('RPUSH', reql, request) > tonumber(bound) then
    local oldest = redis.call('LPOP', reql)
    redis.call('HDEL', req, oldest)
    redis.call('ZREM', reqx, user .. '\n' .. oldest)
  end
end
local function with_totals(reply, encoded, cart, res, now)
  if now == '' or string.sub(encoded, 1, 4) ~= '["",' then return reply end
  local ids = redis.call('ZRANGE', cart, 0, -1)
  local quantity, total, at = 0, 0, tonumber(now)
  if #ids > 0 then
    local recs = redis.call('HMGET', res, unpack(ids))
    for i = 1, #ids do
      if recs[i] then  -- both leave in one script; an id without its record counts for nothing
        local r = cjson.decode(recs[i])
        if tonumber(r[4]) > at then
          local qty = tonumber(r[3])
          quantity = quantity + qty
          total = total + qty * tonumber(r[5])
        end
      end
    end
  end
  reply[3] = quantity
  reply[4] = total
  return reply
end
"""

# KEYS: pool, held. ARGV: base, quantity, reset ("1" with sold_by pairs after it), user, units, ...
_DEFINE = _BASE + _COUNTERS_LIB + _TURN_LIB + r"""
local pkey, hkey = KEYS[1], KEYS[2]
local quantity = tonumber(ARGV[2])
local exists = redis.call('EXISTS', pkey) == 1
local c = exists and counters(pkey) or nil
if ARGV[3] == '1' then
  local sold = 0
  for i = 4, #ARGV, 2 do sold = sold + tonumber(ARGV[i + 1]) end
  if c and c[2] > 0 then return {'conflict', 'cannot reset a pool with reserved units'} end
  if sold > quantity then
    return {'conflict', sold .. ' units sold exceed quantity ' .. quantity}
  end
  local version = c and c[4] + 1 or 1
  redis.call('DEL', hkey)
  for i = 4, #ARGV, 2 do
    if tonumber(ARGV[i + 1]) ~= 0 then redis.call('HSET', hkey, ARGV[i], ARGV[i + 1]) end
  end
  redis.call('HSET', pkey, 'quantity', quantity, 'reserved', 0, 'sold', sold, 'version', version)
elseif not c then
  redis.call('HSET', pkey, 'quantity', quantity, 'reserved', 0, 'sold', 0, 'version', 1)
else
  if quantity < c[2] + c[3] then
    return {'conflict', (c[2] + c[3]) .. ' units are held or sold; quantity too low'}
  end
  if quantity ~= c[1] then
    redis.call('HSET', pkey, 'quantity', quantity)
    redis.call('HINCRBY', pkey, 'version', 1)
  end
end
local f = figures(counters(pkey))
f[#f + 1] = turn(pkey, f[2])
return {'ok', f}
"""

# KEYS: pool, held. ARGV: base.
_DROP = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 'ok' end
if tonumber(redis.call('HGET', KEYS[1], 'reserved')) > 0 then return 'conflict' end
redis.call('DEL', KEYS[1], KEYS[2])
return 'ok'
"""

# KEYS: pool, held, res, cart:<user>, expiry, req:<user>, reql:<user>, reqx, seq.
# ARGV: pool, user, request, qty, limit ('' for none), expires_at, unit_amount, per-user bound,
# now ('' for no totals).
# Returns {1 if a replay else 0, the result as stored (JSON: code ('' on success), available,
# version, and on success id, pool, user, qty, expires_at, unit_amount and the turn it made; for a
# closed pool its message), then for a result holding a reservation the quantity and total of the
# user's cart lines unexpired at `now`}: the caller's ack needs no other round trip, and a refusal
# (most taps of a sell-out) costs neither side the cart.
# Each Redis call inside a script costs about what a small script's whole start does, so the pool
# is read in one HMGET (existence, counters, closed, announced out), the user's holding only when
# a unit is there to take, and the pool written back in one HSET: a sell-out's refusal makes two
# reads and three writes (remembering it), a reservation a dozen calls.
_RESERVE = _TAP_LIB + _TURNED_LIB + r"""
local pkey, hkey, res, cart, expiry, req, reql, reqx, seq = unpack(KEYS)
local pool, user, request = ARGV[1], ARGV[2], ARGV[3]
local qty, expires_at, unit = tonumber(ARGV[4]), ARGV[6], ARGV[7]
local replay, encoded = 1, redis.call('HGET', req, request)
if not encoded then
  replay = 0
  local out
  local c = redis.call('HMGET', pkey, 'quantity', 'reserved', 'sold', 'version', 'closed', 'out')
  if not c[1] then
    out = {'not_found', 0, 0}
  else
    local reserved, version = tonumber(c[2]), tonumber(c[4])
    local available = tonumber(c[1]) - reserved - tonumber(c[3])
    if c[5] then
      out = {'sale_not_live', available, version, c[5]}
    elseif not (qty >= 1 and qty == math.floor(qty)) then  -- NaN and fractions too: never written
      out = {'bad_request', available, version}
    elseif qty > available then
      out = {'sold_out', available, version}
    elseif ARGV[5] ~= '' and tonumber(redis.call('HGET', hkey, user) or '0') + qty > tonumber(ARGV[5]) then
      out = {'limit_reached', available, version}
    else
      local n = redis.call('INCR', seq)
      local id = 'r' .. n
      local left = available - qty
      local turn = turned(left, c[6])
      version = version + 1
      if turn == 0 then
        redis.call('HSET', pkey, 'reserved', reserved + qty, 'version', version)
      else
        redis.call('HSET', pkey, 'reserved', reserved + qty, 'version', version, 'out', turn == 1 and '1' or '0')
      end
      redis.call('HINCRBY', hkey, user, qty)
      redis.call('HSET', res, id, cjson.encode({pool, user, ARGV[4], expires_at, unit}))
      redis.call('ZADD', cart, n, id)
      redis.call('ZADD', expiry, expires_at, id)
      out = {'', left, version, id, pool, user, ARGV[4], expires_at, unit, turn}
    end
  end
  encoded = cjson.encode(out)
  remember(req, reql, reqx, user, request, encoded, expires_at, ARGV[8])
end
return with_totals({replay, encoded}, encoded, cart, res, ARGV[9])
"""

# KEYS: req:<user>, reql:<user>, reqx, res, cart:<user>.
# ARGV: user, request, code, message, expires_at, per-user bound, now ('' for no totals).
# A refusal the shop decided itself (sale not live, unknown item), remembered like a reserve's
# result; a request id already remembered answers its first result. Replies as _RESERVE does.
_REFUSE = _TAP_LIB + r"""
local req, reql, reqx, res, cart = unpack(KEYS)
local user, request = ARGV[1], ARGV[2]
local replay, encoded = 1, redis.call('HGET', req, request)
if not encoded then
  replay = 0
  encoded = cjson.encode({ARGV[3], 0, 0, ARGV[4]})
  remember(req, reql, reqx, user, request, encoded, ARGV[5], ARGV[6])
end
return with_totals({replay, encoded}, encoded, cart, res, ARGV[7])
"""

# KEYS: res. ARGV: base, user, reservation id. Returns {id, record, available, version, turned} or {}.
_RELEASE = _BASE + _UNHOLD_LIB + r"""
local rec = redis.call('HGET', KEYS[1], ARGV[3])
if not rec then return {} end
if cjson.decode(rec)[2] ~= ARGV[2] then return {} end
return unhold(ARGV[3], rec)
"""

# KEYS: res, expiry, reqx, ckx. ARGV: base, now, batch. Returns the units given back, flattened by 5.
# The request ids and commits remembered until `now` are forgotten in the first batch.
_EXPIRE = _BASE + _UNHOLD_LIB + r"""
local res, expiry, reqx, ckx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = ARGV[2]
for _, user in ipairs(redis.call('ZRANGEBYSCORE', ckx, '-inf', now)) do
  redis.call('DEL', base .. 'ck:' .. user)
end
redis.call('ZREMRANGEBYSCORE', ckx, '-inf', now)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', reqx, '-inf', now)) do
  -- request ids hold no newline (user ids might): the last one separates them
  local user, request = string.match(member, '^(.*)\n([^\n]*)$')
  redis.call('HDEL', base .. 'req:' .. user, request)
  redis.call('LREM', base .. 'reql:' .. user, 1, request)
end
redis.call('ZREMRANGEBYSCORE', reqx, '-inf', now)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local rec = redis.call('HGET', res, id)
  if rec then
    for _, v in ipairs(unhold(id, rec)) do out[#out + 1] = v end
  else
    redis.call('ZREM', expiry, id)
  end
end
return out
"""

# KEYS: res, cart:<user>, expiry, ck:<user>, ckx. ARGV: base, now, request id ('' for none), user.
# Returns the committed records, flattened by 2.
_COMMIT = _BASE + r"""
local res, cart, expiry, ck, ckx = unpack(KEYS)
local request = ARGV[3]
if request ~= '' then
  local last = redis.call('HMGET', ck, 'request', 'lines')
  if last[1] == request then return cjson.decode(last[2]) end
end
local now = tonumber(ARGV[2])
local out = {}
local hold_end = nil
for _, id in ipairs(redis.call('ZRANGE', cart, 0, -1)) do
  local rec = redis.call('HGET', res, id)
  local r = cjson.decode(rec)
  if tonumber(r[4]) > now then
    if hold_end == nil or tonumber(r[4]) > tonumber(hold_end) then hold_end = r[4] end
    local pkey = base .. 'pool:' .. r[1]
    local qty = tonumber(r[3])
    redis.call('HDEL', res, id)
    redis.call('ZREM', cart, id)
    redis.call('ZREM', expiry, id)
    redis.call('HINCRBY', pkey, 'reserved', -qty)
    redis.call('HINCRBY', pkey, 'sold', qty)
    redis.call('HINCRBY', pkey, 'version', 1)
    out[#out + 1] = id
    out[#out + 1] = rec
  end
end
if request ~= '' and #out > 0 then
  redis.call('HSET', ck, 'request', request, 'lines', cjson.encode(out))
  redis.call('ZADD', ckx, hold_end, ARGV[4])
end
return out
"""

# KEYS: res, expiry, seq, ckx. ARGV: base, then id, record pairs (as commit returned them).
_RESTORE = _BASE + r"""
local res, expiry, seq, ckx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for i = 2, #ARGV, 2 do
  local id, rec = ARGV[i], ARGV[i + 1]
  local r = cjson.decode(rec)
  redis.call('DEL', base .. 'ck:' .. r[2])
  redis.call('ZREM', ckx, r[2])
  local pkey = base .. 'pool:' .. r[1]
  if redis.call('EXISTS', pkey) == 1 then
    local qty = tonumber(r[3])
    redis.call('HINCRBY', pkey, 'sold', -qty)
    redis.call('HINCRBY', pkey, 'reserved', qty)  -- held already counts them (reserved + sold)
    redis.call('HINCRBY', pkey, 'version', 1)
    redis.call('HSET', res, id, rec)
    redis.call('ZADD', base .. 'cart:' .. r[2], redis.call('INCR', seq), id)
    redis.call('ZADD', expiry, r[4], id)
  end
end
return 'ok'
"""

# KEYS: seq (for the slot). ARGV: base, then pool, user, qty triples.
# Returns pool, counters and turn, flattened by 7, one per line refunded.
_REFUND = _BASE + _COUNTERS_LIB + _TURN_LIB + _HELD_LIB + r"""
local out = {}
for i = 2, #ARGV, 3 do
  local pool, user, qty = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local pkey = base .. 'pool:' .. pool
  if redis.call('EXISTS', pkey) == 1 then
    local c = counters(pkey)
    local back = math.min(qty, c[3])  -- never drive sold negative, even on a misuse
    redis.call('HINCRBY', pkey, 'sold', -back)
    redis.call('HINCRBY', pkey, 'version', 1)
    add_held(pool, user, -back)
    out[#out + 1] = pool
    local f = figures(counters(pkey))
    for _, v in ipairs(f) do out[#out + 1] = v end
    out[#out + 1] = turn(pkey, f[2])
  end
end
return out
"""

# KEYS: pool. ARGV: base, message.
_CLOSE = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSETNX', KEYS[1], 'closed', ARGV[2]) end
return 'ok'
"""

# KEYS: pool. ARGV: base.
_COUNTERS = _COUNTERS_LIB + r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
return figures(counters(KEYS[1]))
"""

# KEYS: cart:<user>, res. ARGV: base. Returns id, record pairs, oldest first.
_CART = r"""
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
local recs = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = recs[i]
end
return out
"""


def _reserve_result(reply: list[Any]) -> ReserveResult:
    """A reserve or refuse script's reply: replay flag, the remembered result, the cart's totals."""
    replay = reply[0] == 1
    code, available, version, *made = orjson.loads(reply[1])
    if code:
        message = made[0] if made else None  # refusals the shop decided, and closed pools, carry their message
        return ReserveResult(code, None, int(available), int(version), replay, message, turned=0)
    id, pool, user, qty, expires, unit, *turned = made  # results remembered by an older version have no turn
    reservation = Reservation(id, pool, user, int(qty), float(expires), int(unit))
    totals = (reply[2], reply[3]) if len(reply) > 2 else None
    return ReserveResult(None, reservation, int(available), int(version), replay, totals=totals,
                         turned=int(turned[0]) if turned else 0)


def _reservation(id: bytes | str, record: bytes) -> Reservation:
    pool, user, qty, expires_at, unit = orjson.loads(record)
    return Reservation(id if isinstance(id, str) else id.decode(), pool, user, int(qty), float(expires_at), int(unit))


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode()


def _counters(values: list[Any]) -> Counters:
    return Counters(*(int(v) for v in values))


def connect(url: str, *, timeout: float, max_connections: int) -> aioredis.Redis:
    """A client for `url` (redis:// or rediss://, password and database in the URL) whose calls fail
    within about `timeout` seconds when Redis does not answer, and which holds at most
    `max_connections` connections (a call waits up to `timeout` for a free one)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout,
        socket_timeout=timeout, socket_connect_timeout=timeout,
        # No retries: a retry would multiply the time a caller waits; the client retries instead
        # (with the same request id, so a tap that did run is found again).
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis(connection_pool=pool)


class RedisStockStore:
    """The StockStore on a Redis every node shares (see the module doc for the keys).

    `max_user_requests` bounds the tap results remembered per user and room, as in the memory
    store; results also leave when `expire` passes their time."""

    def __init__(self, client: aioredis.Redis, prefix: str = "livecart:", max_user_requests: int = 1000, *,
                 timeout: float = 1.0, batch: int = 100, pipelines: int = 1) -> None:
        self.client = client
        self.prefix = prefix
        self.max_user_requests = max_user_requests
        # The scripts go out pipelined with the others called in the same loop turn (taps arriving
        # together share a round trip's client CPU), each answered within twice `timeout`.
        self._batch = RedisBatcher(client.connection_pool, name="stock", timeout=timeout, max_batch=batch,
                                   connections=pipelines)
        self._scripts: list[AsyncScript] = []  # every script, loaded at start

        def register(text: str) -> AsyncScript:
            script = client.register_script(text)
            self._scripts.append(script)
            return script

        self._define = register(_DEFINE)
        self._drop = register(_DROP)
        self._reserve = register(_RESERVE)
        self._refuse = register(_REFUSE)
        self._release = register(_RELEASE)
        self._expire = register(_EXPIRE)
        self._commit = register(_COMMIT)
        self._restore = register(_RESTORE)
        self._refund = register(_REFUND)
        self._close_pool = register(_CLOSE)
        self._counters = register(_COUNTERS)
        self._cart = register(_CART)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "livecart:", max_user_requests: int = 1000,
                 timeout: float = 1.0, max_connections: int = 64, batch: int = 100,
                 pipelines: int = 1) -> RedisStockStore:
        return cls(connect(url, timeout=timeout, max_connections=max_connections), prefix, max_user_requests,
                   timeout=timeout, batch=batch, pipelines=pipelines)

    async def ping(self) -> None:
        """Check that Redis answers, and load the scripts into it (at start), so a show's first taps
        are one round trip each; StorageUnavailable if it does not answer."""
        try:
            await self.client.ping()
            await asyncio.gather(*(self._batch.load(script) for script in self._scripts))
        except (RedisError, OSError) as exc:  # unreachable, a wrong password or database, no SCRIPT right
            raise StorageUnavailable(f"Redis does not answer, or does not take this store's scripts ({exc})") from exc

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)

    def _base(self, room: str) -> str:
        return f"{self.prefix}{{{room}}}:"

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run one script (pipelined with the others of this loop turn); Redis being away becomes
        StorageUnavailable (code ``unavailable``)."""
        try:
            return await self._batch.evalsha(script, keys, args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StorageUnavailable(f"the stock store is unavailable ({exc}); retry") from exc
        except (ReadOnlyError, BusyLoadingError) as exc:  # a replica, or a Redis still loading its data
            raise StorageUnavailable(f"the stock store is unavailable ({exc}); retry") from exc
        except RedisError as exc:
            if "MASTERDOWN" in str(exc):  # a replica that lost its primary
                raise StorageUnavailable(f"the stock store is unavailable ({exc}); retry") from exc
            raise

    async def define(
        self, room: str, pool: str, quantity: int, sold_by: Mapping[str, int] | None = None
    ) -> Counters:
        if quantity < 0:
            raise DomainError("bad_request", "quantity must not be negative")
        base = self._base(room)
        args: list[Any] = [base, quantity, "0" if sold_by is None else "1"]
        for user, units in (sold_by or {}).items():
            args += [user, units]
        reply = await self._run(self._define, [f"{base}pool:{pool}", f"{base}held:{pool}"], args)
        if reply[0] != b"ok":
            raise DomainError(_text(reply[0]), _text(reply[1]))
        return _counters(reply[1])

    async def drop(self, room: str, pool: str) -> None:
        base = self._base(room)
        if await self._run(self._drop, [f"{base}pool:{pool}", f"{base}held:{pool}"], [base]) != b"ok":
            raise DomainError("conflict", "units of this pool are in carts")

    async def reserve(
        self,
        room: str,
        pool: str,
        user: str,
        request_id: str,
        qty: int,
        per_user_limit: int | None,
        expires_at: float,
        unit_amount: int,
        now: float | None = None,
    ) -> ReserveResult:
        base = self._base(room)
        keys = [f"{base}pool:{pool}", f"{base}held:{pool}", f"{base}res", f"{base}cart:{user}", f"{base}expiry",
                f"{base}req:{user}", f"{base}reql:{user}", f"{base}reqx", f"{base}seq"]
        limit = "" if per_user_limit is None else per_user_limit
        args = [pool, user, request_id, qty, limit, repr(float(expires_at)), unit_amount,
                self.max_user_requests, "" if now is None else repr(float(now))]
        return _reserve_result(await self._run(self._reserve, keys, args))

    async def refuse(
        self, room: str, user: str, request_id: str, code: str, message: str, expires_at: float,
        now: float | None = None,
    ) -> ReserveResult:
        base = self._base(room)
        keys = [f"{base}req:{user}", f"{base}reql:{user}", f"{base}reqx", f"{base}res", f"{base}cart:{user}"]
        args = [user, request_id, code, message, repr(float(expires_at)), self.max_user_requests,
                "" if now is None else repr(float(now))]
        return _reserve_result(await self._run(self._refuse, keys, args))

    async def release(self, room: str, user: str, reservation_id: str) -> Returned | None:
        base = self._base(room)
        reply = await self._run(self._release, [f"{base}res"], [base, user, reservation_id])
        if not reply:
            return None
        return Returned(_reservation(reply[0], reply[1]), int(reply[2]), int(reply[3]), int(reply[4]))

    async def expire(self, room: str, now: float) -> list[Returned]:
        base = self._base(room)
        keys = [f"{base}res", f"{base}expiry", f"{base}reqx", f"{base}ckx"]
        returned: list[Returned] = []
        while True:
            reply = await self._run(self._expire, keys, [base, repr(float(now)), EXPIRE_BATCH])
            for i in range(0, len(reply), 5):
                returned.append(Returned(_reservation(reply[i], reply[i + 1]), int(reply[i + 2]), int(reply[i + 3]),
                                         int(reply[i + 4])))
            if len(reply) < 5 * EXPIRE_BATCH:
                return returned

    async def commit(self, room: str, user: str, now: float, request_id: str | None = None) -> list[Reservation]:
        base = self._base(room)
        keys = [f"{base}res", f"{base}cart:{user}", f"{base}expiry", f"{base}ck:{user}", f"{base}ckx"]
        reply = await self._run(self._commit, keys, [base, repr(float(now)), request_id or "", user])
        return [_reservation(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    async def restore(self, room: str, lines: list[Reservation]) -> None:
        if not lines:
            return
        base = self._base(room)
        args: list[Any] = [base]
        for r in lines:
            record = orjson.dumps([r.pool, r.user, str(r.qty), repr(float(r.expires_at)), str(r.unit_amount)])
            args += [r.id, record]
        await self._run(self._restore, [f"{base}res", f"{base}expiry", f"{base}seq", f"{base}ckx"], args)

    async def refund(self, room: str, lines: list[Reservation]) -> dict[str, Counters]:
        if not lines:
            return {}
        base = self._base(room)
        args: list[Any] = [base]
        for line in lines:
            args += [line.pool, line.user, line.qty]
        reply = await self._run(self._refund, [f"{base}seq"], args)
        refunded: dict[str, Counters] = {}
        for i in range(0, len(reply), 7):
            pool, counters = _text(reply[i]), _counters(reply[i + 1:i + 7])
            before = refunded.get(pool)
            if before is not None:  # several lines of one pool: its figures after the last, any turn made
                counters = counters._replace(turned=(before.turned or 0) + (counters.turned or 0))
            refunded[pool] = counters
        return refunded

    async def close_pool(self, room: str, pool: str, message: str) -> None:
        await self._run(self._close_pool, [f"{self._base(room)}pool:{pool}"], [self._base(room), message])

    async def counters(self, room: str, pool: str) -> Counters | None:
        base = self._base(room)
        reply = await self._run(self._counters, [f"{base}pool:{pool}"], [base])
        return _counters(reply) if reply else None

    async def cart(self, room: str, user: str) -> list[Reservation]:
        base = self._base(room)
        reply = await self._run(self._cart, [f"{base}cart:{user}", f"{base}res"], [base])
        return [_reservation(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]
