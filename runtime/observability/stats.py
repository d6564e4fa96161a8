"""Per-minute invocation counts and duration buckets of every function, cluster-wide, in Redis.

Every executor (gateway, worker, streams) adds to the same hashes, so the console's charts show the
whole cluster. Counts are gathered in memory and written once a second in one transaction. While Redis is
down they stay in memory (a few numbers per function and minute, minutes older than the keys' TTL dropped)
and are written when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from redis.asyncio import Redis

from .. import keys
from ..shutdown import cancel
from .outage import UNREACHABLE, RedisHealth, every

log = logging.getLogger(__name__)

BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000, 900000)
TTL_S = 2 * 3600


def bucket_of(duration_ms: float) -> int:
    for index, bound in enumerate(BUCKETS_MS):
        if duration_ms <= bound:
            return index
    return len(BUCKETS_MS) - 1


class StatsSink:
    def __init__(self, redis: Redis, *, interval_s: float = 1.0, health: RedisHealth | None = None) -> None:
        self._redis = redis
        self._interval_s = interval_s
        self._health = health or RedisHealth.of(redis)
        self._pending: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        if self._health.down:
            return                      # shutdown does not wait for Redis: these counts are lost
        with contextlib.suppress(*UNREACHABLE):
            await self._flush()

    def record(self, *, function: str, ok: bool, throttled: bool, duration_ms: float) -> None:
        counts = self._pending[(function, int(time.time()) // 60)]
        if throttled:
            counts["throttles"] += 1
            return
        counts["invocations"] += 1
        if not ok:
            counts["errors"] += 1
        counts[f"b{bucket_of(duration_ms)}"] += 1

    async def _run(self) -> None:
        # while Redis is down the counts are kept in memory (the outage is logged once, by RedisHealth)
        await every(self._interval_s, self._flush, health=self._health, logger=log,
                    failure="could not write invocation stats to Redis")

    async def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, defaultdict(lambda: defaultdict(int))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:      # all or nothing: kept or counted once
                for (function, minute), counts in pending.items():
                    key = keys.minute_stats(function, minute)
                    for field, value in counts.items():
                        pipe.hincrby(key, field, value)
                    pipe.expire(key, TTL_S)
                await pipe.execute()
        except UNREACHABLE:
            self._keep(pending)
            raise

    def _keep(self, pending: dict[tuple[str, int], dict[str, int]]) -> None:
        """Counts that could not be written go back for the next flush, but for minutes Redis no longer keeps."""
        oldest = int(time.time()) // 60 - TTL_S // 60
        for (function, minute), counts in pending.items():
            if minute < oldest:
                continue
            into = self._pending[(function, minute)]
            for field, value in counts.items():
                into[field] += value


def _percentile(buckets: list[int], quantile: float) -> float | None:
    total = sum(buckets)
    if total == 0:
        return None
    running = 0
    for index, count in enumerate(buckets):
        running += count
        if running >= quantile * total:
            return float(BUCKETS_MS[index])
    return float(BUCKETS_MS[-1])


async def read_stats(redis: Redis, function: str, *, minutes: int = 60) -> list[dict[str, Any]]:
    """One point per minute, oldest first: invocations, errors, throttles and p50/p99 duration (ms, the
    upper bound of the bucket the percentile falls in)."""
    now = int(time.time()) // 60
    span = list(range(now - minutes + 1, now + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for minute in span:
            pipe.hgetall(keys.minute_stats(function, minute))
        rows = await pipe.execute()
    points = []
    for minute, row in zip(span, rows):
        counts = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in row.items()}
        buckets = [counts.get(f"b{index}", 0) for index in range(len(BUCKETS_MS))]
        points.append({"minute": datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                       "invocations": counts.get("invocations", 0), "errors": counts.get("errors", 0),
                       "throttles": counts.get("throttles", 0), "p50_ms": _percentile(buckets, 0.5),
                       "p99_ms": _percentile(buckets, 0.99)})
    return points
