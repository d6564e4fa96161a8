"""Reserved concurrency, counted cluster-wide in Redis with leases that expire when a node dies."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from .. import keys

# Drop expired leases, then take one if fewer than the limit are held. Redis's own clock is the
# only clock, so nodes with skewed clocks agree.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
local expires = now_ms + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# A lease outlives its invocation's timeout by this much (init can take up to 10 s, as Lambda's).
LEASE_GRACE_MS = 15_000


class ConcurrencyLimiter:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, function: str, *, limit: int, timeout_s: float) -> str | None:
        """A lease id, or None when `limit` executions of `function` are already running."""
        if limit <= 0:
            return None
        lease = uuid.uuid4().hex
        ttl_ms = int(timeout_s * 1000) + LEASE_GRACE_MS
        taken = await self._acquire(keys=[keys.concurrency(function)], args=[limit, ttl_ms, lease])
        return lease if taken else None

    async def release(self, function: str, lease: str) -> None:
        await self._redis.zrem(keys.concurrency(function), lease)

    async def in_flight(self, function: str) -> int:
        return int(await self._redis.zcard(keys.concurrency(function)))
