"""Leases in Redis: one key per lease (``SET NX PX``), one counter per lease for its fencing tokens.

Keys: ``{prefix}lease:{NAME}`` holds ``"TOKEN HOLDER"`` with the TTL, ``{prefix}lease:{NAME}:token``
the last token given (it never expires, so tokens keep growing across holders). NAME (a room id)
is the hash tag, so both keys sit on one Cluster slot and each script touches one slot. Each
operation is one Lua script, so taking the lease and drawing its token happen at once, and a
renewal or release only acts when the caller is still the holder under its token.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from engine.leases.base import Grant, valid_until

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local space = string.find(current, ' ', 1, true)
  if string.sub(current, space + 1) ~= ARGV[1] then
    return false
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(current, 1, space - 1))
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisLeases:
    """Leases shared by every node using the same Redis and key prefix."""

    def __init__(self, client: Redis, prefix: str = "livecart:") -> None:
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _key(self, name: str) -> str:
        return f"{self._prefix}lease:{{{name}}}"

    @staticmethod
    def _value(grant: Grant) -> str:
        return f"{grant.token} {grant.holder}"

    async def acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        started = time.monotonic()
        key = self._key(name)
        token = await self._acquire(keys=[key, key + ":token"], args=[holder, _ms(ttl)])
        return None if token is None else Grant(name, holder, int(token), valid_until(started, ttl))

    async def renew(self, grant: Grant, ttl: float) -> Grant | None:
        started = time.monotonic()
        renewed = await self._renew(keys=[self._key(grant.name)], args=[self._value(grant), _ms(ttl)])
        if not renewed:
            return None
        return Grant(grant.name, grant.holder, grant.token, valid_until(started, ttl))

    async def release(self, grant: Grant) -> bool:
        return bool(await self._release(keys=[self._key(grant.name)], args=[self._value(grant)]))

    async def token(self, name: str) -> int | None:
        value = await self._client.get(self._key(name))
        return None if value is None else int(value.split(b" ", 1)[0])
