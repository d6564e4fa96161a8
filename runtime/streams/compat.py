"""Every workaround for kafka-python in one place, each guarded by the exact versions it was written for.

kafka-python 3.0 has faults its public API gives no way around; each workaround below names the versions it was
checked against (`Workaround.versions`). `apply()`, called once by the streams runner at start (never at import),
patches what matches the installed version and logs every workaround it skips, saying what the user may see
without it. The consumer asks `Workaround.active` before using the others. To support a new kafka-python, check
each fault against it and add the version where the fault is still there (or delete the workaround).

- FETCHER_RESUME: `Fetcher.fetched_records` gives back the records it parked for a paused partition only when its
  in-line slot `_next_partition_records` is None; an exhausted PartitionRecords left in that slot is falsy but
  not None, so a partition paused and resumed is never fetched again (reproduced with a plain consumer that
  pauses and resumes). Clearing the exhausted slot first restores the intended order.
- LOOP_SLEEP: the rebalance listener runs on kafka-python's IO loop, which is not asyncio and has no public
  awaitable sleep; its own code yields a `KernelEvent("_sleep", ...)`, which only `loop_sleep` below uses.
- STUCK_FETCH: after a rebalance, an owned partition with records behind it can stop fetching for good (nothing
  buffered, nothing in flight); `StuckFetch` notices it and reads the partition again from its last commit.
- ORPHANED_MEMBER: a member can lose a rebalance's answer (when a rebalance outlasts a poll) and stay out of the
  group for good; `Orphaned` notices that nobody owns any partition of the topic and the consumer rejoins.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import kafka
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher

try:
    from kafka.net.selector import KernelEvent
except ImportError:          # another kafka-python: LOOP_SLEEP is skipped (see loop_sleep)
    KernelEvent = None

log = logging.getLogger(__name__)

VERSION: str = kafka.__version__

STUCK_AFTER_S = 5.0        # owned, behind, idle this long: the fetch is re-started from the last commit
ORPHANED_AFTER_S = 15.0    # out of the group with nobody owning the topic this long (past the 10 s session timeout)


@dataclass(frozen=True, kw_only=True)
class Workaround:
    """One fault of kafka-python worked around: the versions it is there in, and what is seen without the fix."""
    name: str
    versions: frozenset[str]
    without: str

    @property
    def active(self) -> bool:
        return VERSION in self.versions


FETCHER_RESUME = Workaround(name="fetcher resume", versions=frozenset({"3.0.12"}),
                            without="a partition paused and resumed (a backlog) may stop being consumed")
LOOP_SLEEP = Workaround(name="rebalance listener sleep", versions=frozenset({"3.0.12"}),
                        without="a rebalance that waits for a batch blocks kafka-python's IO thread (no heartbeats "
                                "meanwhile: a long batch may get this member out of the group)")
STUCK_FETCH = Workaround(name="stuck fetch", versions=frozenset({"3.0.12"}),
                         without="a partition that stops fetching after a rebalance is not restarted (its lag grows)")
ORPHANED_MEMBER = Workaround(name="orphaned member", versions=frozenset({"3.0.12"}),
                             without="a member left out of its group after a rebalance does not rejoin by itself")
ALL = (FETCHER_RESUME, LOOP_SLEEP, STUCK_FETCH, ORPHANED_MEMBER)

_applied = False


def apply() -> None:
    """Patch what this kafka-python needs; log each workaround skipped on it. Idempotent."""
    global _applied
    if _applied:
        return
    _applied = True
    for workaround in ALL:
        if not workaround.active:
            log.warning("kafka-python workaround skipped: written for other versions", extra={
                "workaround": workaround.name, "kafka_python": VERSION, "versions": sorted(workaround.versions),
                "without_it": workaround.without})
    if FETCHER_RESUME.active:
        _patch_fetcher()
    if not native_crc32c():
        log.warning("kafka-python checks each record batch's CRC in pure Python: about twice the CPU per record "
                    "(pip install crc32c, which lambent's dependencies name)")


def native_crc32c() -> bool:
    """Whether kafka-python checks record batches' CRC-32C with the `crc32c` package's C code, not its own
    pure-Python loop (a third to a half of a consumer's CPU per record)."""
    from kafka.record import util
    used = (util.calc_crc32c.__defaults__ or (None,))[0]     # bound when kafka-python was imported
    return util.crc32c_c is not None and used is util.crc32c_c


def _patch_fetcher() -> None:
    original = Fetcher.fetched_records

    def fetched_records(self: Any, *args: Any, **kwargs: Any) -> Any:
        current = getattr(self, "_next_partition_records", None)
        if current is not None and not current:
            self._next_partition_records = None
        return original(self, *args, **kwargs)

    Fetcher.fetched_records = fetched_records


async def loop_sleep(seconds: float) -> None:
    """Wait `seconds` inside a rebalance listener, yielding to kafka-python's loop (heartbeats go on)."""
    if LOOP_SLEEP.active and KernelEvent is not None:
        await KernelEvent("_sleep", seconds)
    else:
        time.sleep(seconds)


class StuckFetch:
    """STUCK_FETCH: which owned partitions have stopped fetching, and restarting them from their last commit."""

    def __init__(self, mapping: str) -> None:
        self._mapping = mapping
        self._idle_since: dict[TopicPartition, float] = {}

    def check(self, consumer: KafkaConsumer, tp: TopicPartition, *, lag: int | None, busy: bool,
              start: int | None) -> bool:
        """Called at each state report. `busy`: records buffered or a batch in flight. Re-seeks the partition to
        `start` (its last commit) and resumes it once it was idle with lag for STUCK_AFTER_S; True then."""
        if not STUCK_FETCH.active or not lag or busy:
            self._idle_since.pop(tp, None)
            return False
        now = time.monotonic()
        since = self._idle_since.get(tp)
        if since is None:
            self._idle_since[tp] = now
            return False
        if now - since < STUCK_AFTER_S:
            return False
        del self._idle_since[tp]
        log.warning("partition stopped fetching with records behind it; reading again from its commit",
                    extra={"mapping": self._mapping, "partition": tp.partition, "offset": start, "lag": lag})
        consumer.resume(tp)
        if start is not None:
            consumer.seek(tp, start)
        return True

    def forget(self, tp: TopicPartition) -> None:
        self._idle_since.pop(tp, None)


class Orphaned:
    """ORPHANED_MEMBER: whether this member has been out of its group, with nobody owning the topic, for long."""

    def __init__(self) -> None:
        self._since: float | None = None

    def check(self, *, owns_any: bool, anyone_owns: bool, now: float) -> bool:
        """True when the consumer should leave and rejoin the group (the clock starts again then)."""
        if not ORPHANED_MEMBER.active or owns_any or anyone_owns:
            self._since = None
            return False
        if self._since is None:
            self._since = now
            return False
        if now - self._since > ORPHANED_AFTER_S:
            self._since = None
            return True
        return False
