"""Riding out a Redis outage: retry with backoff, and log it once per outage, whichever loop sees it.

Every long-lived loop of a role (a worker's dequeue, its maintenance thread, an outcome write) wraps its
Redis calls the same way, so that an outage gives one warning and one "back" line per process, not one
traceback per loop per retry:

    outage = outage_for(config.redis_url)              # one per process and Redis URL, shared by its loops
    reply = call(lambda: client.get(key), outage=outage, stop=stopping.is_set)          # threads
    reply = await acall(lambda: client.get(key), outage=outage)                         # asyncio

`call` returns once the call succeeds; while Redis cannot be reached it waits 0.5 s, doubling to 10 s
(with jitter), less when another loop of the process sees Redis back first, and raises `Stopped` as soon
as `stop()` is true. `acall` is the same for coroutines (cancel the task to stop it). Loops that keep
their own structure use `Outage.failed(exc)` / `Outage.ok()` and a `Backoff` directly; the process's
RedisHealth (observability/outage.py) reports to the same Outage, so its probe ends a wait here too.
Only "cannot reach Redis" errors are retried (`UNREACHABLE`); a bad command or a script error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Awaitable, Callable, TypeVar

import redis

from .redis_url import masked

log = logging.getLogger(__name__)
T = TypeVar("T")

# What "Redis is not reachable" looks like to redis-py (sync and asyncio alike; it wraps socket errors in
# these): refused or dropped connections, timeouts, a Redis still loading its append-only file
# (BusyLoadingError is a ConnectionError). A ResponseError is an answer, not an outage.
UNREACHABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

FIRST_S = 0.5
MAX_S = 10.0
_SLICE_S = 0.1          # how often a waiting `call` looks at stop() and at Redis being back


class Stopped(Exception):
    """`call` gave up because its `stop()` became true while Redis was unreachable."""


class Backoff:
    """Delays of 0.5 s doubling to 10 s, each with +-10 % jitter so that many processes do not retry in step."""

    def __init__(self, first_s: float = FIRST_S, max_s: float = MAX_S, jitter: float = 0.1) -> None:
        if not 0 < first_s <= max_s or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < first_s <= max_s and 0 <= jitter < 1")
        self.first_s, self.max_s, self.jitter = first_s, max_s, jitter
        self._next_s = first_s

    def next_s(self) -> float:
        delay, self._next_s = self._next_s, min(self._next_s * 2, self.max_s)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._next_s = self.first_s


class Outage:
    """Whether one Redis is reachable, as the loops of this process see it. The first failure of an outage
    logs a warning, the first success after it an info line; everything in between is silent. Thread-safe."""

    def __init__(self, redis_url: str, *, logger: logging.Logger | None = None) -> None:
        self.url = masked(redis_url)
        self._log = logger or log
        self._lock = threading.Lock()
        self._reachable = threading.Event()
        self._reachable.set()
        self._since = 0.0
        self.outages = 0                 # how many began in this process (for the final counts)

    @property
    def down(self) -> bool:
        return not self._reachable.is_set()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if not self._reachable.is_set():
                return
            self._reachable.clear()
            self._since = time.monotonic()
            self.outages += 1
        self._log.warning("Redis is not reachable; retrying", extra={"redis": self.url, "error": str(exc) or
                                                                     type(exc).__name__})

    def ok(self) -> None:
        if self._reachable.is_set():     # the hot path: no lock
            return
        with self._lock:
            if self._reachable.is_set():
                return
            self._reachable.set()
            down_s = time.monotonic() - self._since
        self._log.info("Redis is reachable again", extra={"redis": self.url, "down_s": round(down_s, 1)})

    def pause(self, seconds: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Sleep up to `seconds`; return early when another loop saw Redis back, or when `stop()` is true."""
        deadline = time.monotonic() + seconds
        while self.down and not stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._reachable.wait(min(left, _SLICE_S))


_outages: dict[str, Outage] = {}
_outages_lock = threading.Lock()


def outage_for(redis_url: str) -> Outage:
    """The process's one Outage for `redis_url`: every loop that shares it shares its single warning."""
    with _outages_lock:
        found = _outages.get(redis_url)
        if found is None:
            found = _outages[redis_url] = Outage(redis_url)
        return found


def call(fn: Callable[[], T], *, outage: Outage, stop: Callable[[], bool] = lambda: False,
         backoff: Backoff | None = None) -> T:
    """`fn()`, retried while Redis is unreachable, until it returns; raises Stopped once `stop()` is true."""
    backoff = backoff or Backoff()
    while True:
        try:
            result = fn()
        except UNREACHABLE as exc:
            outage.failed(exc)
            if not stop():
                outage.pause(backoff.next_s(), stop)
            if stop():
                raise Stopped() from exc
            continue
        outage.ok()
        return result


async def acall(fn: Callable[[], Awaitable[T]], *, outage: Outage, backoff: Backoff | None = None) -> T:
    """`await fn()`, retried while Redis is unreachable, until it returns; cancel the task to stop it."""
    backoff = backoff or Backoff()
    while True:
        try:
            result = await fn()
        except UNREACHABLE as exc:
            outage.failed(exc)
            deadline = time.monotonic() + backoff.next_s()
            while outage.down and time.monotonic() < deadline:
                await asyncio.sleep(min(_SLICE_S, max(0.0, deadline - time.monotonic())))
            continue
        outage.ok()
        return result
