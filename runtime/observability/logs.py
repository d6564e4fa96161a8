"""Captured invocation logs: kept in Redis per function (capped), written in batches off the hot path.

While Redis is down the records wait in memory (at most `buffer` of them; beyond that they are counted and
dropped, and the count is logged once Redis is back), and are written when it answers again: an outage
neither fails an invocation nor loses its logs, short of filling the buffer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, NamedTuple

import orjson
from redis.asyncio import Redis

from .. import keys
from ..shutdown import cancel
from .outage import UNREACHABLE, RedisHealth

log = logging.getLogger(__name__)


class LogRecord(NamedTuple):
    """One invocation's captured log, as stored (a tuple: made on the hot path, for every invocation)."""
    function: str
    version: str          # $LATEST or the published number
    request_id: str
    text: str
    time_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps({"requestId": self.request_id, "function": self.function,
                             "version": self.version, "time": self.time_ms, "text": self.text})


class LogSink:
    """Keeps records and flushes them to Redis in one pipeline per batch. record() only appends to a deque: an
    asyncio.Queue's put and get, and a frozen dataclass, were 2-3 us of every warm invocation on the gateway."""

    def __init__(self, redis: Redis, *, keep_per_function: int, max_batch: int = 500,
                 linger_s: float = 0.05, buffer: int = 50_000, health: RedisHealth | None = None) -> None:
        self._redis = redis
        self._keep = keep_per_function
        self._max_batch = max_batch
        self._linger_s = linger_s      # gather for this long before a write: one pipeline for many records
        self._buffer = buffer
        self._waiting: collections.deque[LogRecord] = collections.deque()    # not yet taken into a batch
        self._arrived = asyncio.Event()         # set while records wait
        self._batch: list[LogRecord] = []       # taken from the waiting ones, not yet stored
        self._health = health or RedisHealth.of(redis)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._dropped_told = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Flush what is kept (one try when Redis is down: shutdown does not wait for it), then stop."""
        await cancel(self._task)
        while self._batch or self._waiting:
            if not self._batch:
                self._batch = self._drain()
            try:
                if self._health.down:
                    raise self._health.unavailable()
                await self._flush(self._batch)
            except UNREACHABLE:
                lost = len(self._batch) + len(self._waiting)
                log.warning("%d invocation logs not stored: Redis is not reachable at shutdown", lost,
                            extra={"records": lost})
                return
            self._batch = []

    def record(self, *, function: str, version: str, request_id: str, text: str) -> None:
        if len(self._waiting) >= self._buffer:   # Redis is far behind or down: the server log still has the text
            self.dropped += 1
            return
        self._waiting.append(LogRecord(function, version, request_id, text, int(time.time() * 1000)))
        self._arrived.set()

    def _drain(self) -> list[LogRecord]:
        waiting = self._waiting
        batch = [waiting.popleft() for _ in range(min(len(waiting), self._max_batch))]
        if not waiting:
            self._arrived.clear()
        return batch

    async def _run(self) -> None:
        while True:
            if not self._batch:
                await self._arrived.wait()
                await asyncio.sleep(self._linger_s)
                self._batch = self._drain()
            await self._health.wait_back()          # while Redis is down the records wait, in memory
            try:
                await self._flush(self._batch)
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self._health.failed(exc)            # kept: written when Redis answers again
                continue
            except Exception:
                log.warning("could not store %d invocation logs in Redis", len(self._batch), exc_info=True)
                self._batch = []                    # not an outage: a batch Redis refuses is not tried forever
                await asyncio.sleep(1.0)
                continue
            self._batch = []
            if self.dropped > self._dropped_told:
                log.warning("%d invocation logs were dropped while Redis was behind or down: the buffer holds %d",
                            self.dropped - self._dropped_told, self._buffer,
                            extra={"records": self.dropped - self._dropped_told})
                self._dropped_told = self.dropped

    async def _flush(self, batch: list[LogRecord]) -> None:
        if not batch:
            return
        by_function: dict[str, list[bytes]] = {}
        for entry in batch:
            by_function.setdefault(entry.function, []).append(entry.to_json())
        async with self._redis.pipeline(transaction=False) as pipe:
            for function, records in by_function.items():
                pipe.lpush(keys.logs(function), *records)
                pipe.ltrim(keys.logs(function), 0, self._keep - 1)
            await pipe.execute()


async def read_logs(redis: Redis, function: str, *, limit: int = 100, request_id: str | None = None,
                    since_ms: int | None = None) -> list[dict[str, Any]]:
    """Stored records of a function, oldest first; filtered by request id or time when asked."""
    raw = await redis.lrange(keys.logs(function), 0, -1 if request_id else max(limit, 1) - 1)
    records = [orjson.loads(item) for item in raw]
    if request_id:
        records = [record for record in records if record["requestId"] == request_id]
    if since_ms is not None:
        records = [record for record in records if record["time"] >= since_ms]
    return list(reversed(records[:limit]))
