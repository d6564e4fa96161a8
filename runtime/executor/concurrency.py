"""Reserved concurrency, counted cluster-wide in Redis with leases that expire when a node dies.

While Redis is down, each process counts on its own: at most `limit` executions of the function in this
process. A function keeps serving through an outage instead of failing closed; the price is that N processes
may run up to N x `limit` until Redis is back (exactly `limit` on a single node). Leases that could not be
released meanwhile are released once Redis answers, or expire by themselves (timeout + LEASE_GRACE_MS).
"""

from __future__ import annotations

import collections
import uuid

from redis.asyncio import Redis

from .. import keys
from ..observability.outage import UNREACHABLE, RedisHealth

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
_LOCAL = "local:"                 # a lease taken in this process while Redis was down; Redis never saw it
_UNRELEASED_MAX = 10_000          # leases to release when Redis is back; past that they are left to expire


class ConcurrencyLimiter:
    def __init__(self, redis: Redis, *, health: RedisHealth | None = None) -> None:
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._health = health or RedisHealth.of(redis)
        self._running: collections.Counter[str] = collections.Counter()   # leases held in this process
        self._unreleased: list[tuple[str, str]] = []

    async def acquire(self, function: str, *, limit: int, timeout_s: float) -> str | None:
        """A lease id, or None when `limit` executions of `function` are already running (in the cluster;
        in this process while Redis is down)."""
        if limit <= 0:
            return None
        if not self._health.down:
            try:
                if self._unreleased:
                    await self._release_left_over()
                lease = uuid.uuid4().hex
                ttl_ms = int(timeout_s * 1000) + LEASE_GRACE_MS
                taken = await self._acquire(keys=[keys.concurrency(function)], args=[limit, ttl_ms, lease])
            except UNREACHABLE as exc:
                self._health.failed(exc)
            else:
                if not taken:
                    return None
                self._running[function] += 1
                return lease
        if self._running[function] >= limit:
            return None
        self._running[function] += 1
        return _LOCAL + uuid.uuid4().hex

    async def release(self, function: str, lease: str) -> None:
        """Never raises for want of Redis: the invocation it ends has run, whatever Redis says."""
        self._running[function] -= 1
        if self._running[function] <= 0:
            del self._running[function]
        if lease.startswith(_LOCAL):
            return
        if not self._health.down:
            try:
                await self._redis.zrem(keys.concurrency(function), lease)
                return
            except UNREACHABLE as exc:
                self._health.failed(exc)
        if len(self._unreleased) < _UNRELEASED_MAX:
            self._unreleased.append((function, lease))

    async def _release_left_over(self) -> None:
        left, self._unreleased = self._unreleased, []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for function, lease in left:
                    pipe.zrem(keys.concurrency(function), lease)
                await pipe.execute()
        except UNREACHABLE:
            self._unreleased = left + self._unreleased
            raise

    async def in_flight(self, function: str) -> int:
        return int(await self._redis.zcard(keys.concurrency(function)))
