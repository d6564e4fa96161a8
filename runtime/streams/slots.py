"""A cluster-wide semaphore of an `sqs` mapping (keys.sqs_slots): at most maximum_concurrency batches polled or run
at once across every streams process."""

from __future__ import annotations

import threading
import time

import redis

SLOT_LEASE_S = 10.0          # a slot of a process that died is free again after this

# KEYS[1]: the slots' sorted set. ARGV: holder, size, now (ms), the lease's expiry (ms).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 86400000)
  return 1
end
return 0
"""


class Slots:
    """A cluster-wide semaphore of leases in a sorted set: at most `size` holders. The holders of this process
    are renewed by its reporter thread (`renew`), every few seconds; a process that dies frees its slots when
    their leases lapse (SLOT_LEASE_S), and another process's pollers take them."""

    def __init__(self, connection: redis.Redis, key: str, size: int) -> None:
        self._redis = connection
        self._key = key
        self._size = size
        self._acquire = connection.register_script(_ACQUIRE)
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def take(self, holder: str) -> bool:
        """Take (or renew) `holder`'s slot; False when all are taken."""
        now = int(time.time() * 1000)
        taken = bool(self._acquire(keys=[self._key], args=[holder, self._size, now, now + int(SLOT_LEASE_S * 1000)]))
        if taken:
            with self._lock:
                self._held.add(holder)
        return taken

    def give_back(self, holder: str) -> None:
        with self._lock:
            self._held.discard(holder)
        self._redis.zrem(self._key, holder)

    def give_back_all(self) -> None:
        """Every slot of this process (it stops: pollers still in a long poll hand back what they get)."""
        with self._lock:
            held, self._held = list(self._held), set()
        if held:
            self._redis.zrem(self._key, *held)

    def renew(self) -> None:
        with self._lock:
            held = list(self._held)
        if held:
            expiry = int((time.time() + SLOT_LEASE_S) * 1000)
            self._redis.zadd(self._key, {holder: expiry for holder in held}, xx=True)
