"""Flow control and commits of one mapping's consumer: the partitions it owns, their buffers, their offsets.

The poll thread buffers what it fetches (`buffer`), pauses a partition whose buffer holds two batches and
`streams.buffer_bytes` and resumes it once it holds less (`flow_control`), and takes each partition's next batch
when it is due (`take`: full, or its window has passed); a batch task takes the following one itself. Tasks
offer each offset that may be committed (`offer`), and the poll thread commits them (`commit_pending`, at most
every `streams.commit_interval_s`): nothing is committed past what a batch finished.

Why both bounds are loose: with kafka-python 3.0.12 the poll after a pause often returns nothing until its
timeout (it fetches from a broker one request at a time, skips partitions holding parked data, and sleeps its
retry backoff when nothing is in flight), so a consumer that paused at two batches of small records spent most
of its time waiting; and a synchronous commit is a round trip of several milliseconds that the poll thread
waits for.

kafka-python's consumer is not thread-safe: every call on it here is made on the poll thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from ..config import Config
from ..observability import metrics
from .batch import Mapping

log = logging.getLogger(__name__)

KAFKA_TIMEOUT_MS = 5000  # one blocking call to the broker (commit, committed offset, close)


@dataclass(eq=False)
class Partition:
    """One owned partition: what is buffered, the batch task running it, what was last committed."""
    buffer: collections.deque[Any] = field(default_factory=collections.deque)
    first_buffered: float | None = None
    buffered_bytes: int = 0                 # the buffer's records, by record_size
    future: Future[None] | None = None      # the partition's task: set and cleared on the poll thread
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    committed: int | None = None
    paused: bool = False

    @property
    def running(self) -> bool:
        return self.future is not None and not self.done.is_set()


def record_size(record: Any) -> int:
    """What a record adds to a batch's event: base64 key and value, and about 200 bytes of JSON around them."""
    return len(record.value or b"") * 4 // 3 + len(record.key or b"") * 4 // 3 + 200


class KafkaOutage:
    """A Kafka error is logged once until Kafka answers again: a broker that is down fails every call alike."""

    def __init__(self, mapping: str) -> None:
        self._mapping = mapping
        self._failing = False

    def failed(self, exc: KafkaError, doing: str) -> None:
        if not self._failing:
            log.warning("Kafka error; %s", doing, exc_info=True,
                        extra={"mapping": self._mapping, "error": str(exc) or type(exc).__name__})
            self._failing = True

    def ok(self) -> None:
        if self._failing:
            log.info("Kafka is reachable again; consuming", extra={"mapping": self._mapping})
            self._failing = False


class Partitions:
    """The partitions one consumer owns (`owned`, changed by the rebalance listener's thread too)."""

    def __init__(self, mapping: Mapping, config: Config, outage: KafkaOutage) -> None:
        self._mapping = mapping
        self._config = config
        self._outage = outage
        self.owned: dict[TopicPartition, Partition] = {}
        self.first_fetched: dict[TopicPartition, int] = {}     # first offset this consumer ever read
        self._buffers_lock = threading.Lock()                  # every Partition.buffer and first_buffered
        self._pending: dict[TopicPartition, int] = {}
        self._pending_lock = threading.Lock()
        self._committed_at = float("-inf")                     # monotonic time of the poll loop's last commit

    # -- flow control ----------------------------------------------------------------------

    def buffer(self, fetched: dict[TopicPartition, list[Any]], now: float) -> None:
        with self._buffers_lock:
            for tp, records in fetched.items():
                part = self.owned.get(tp)
                if part is None or not records:       # not ours any more (revoked during this poll)
                    continue
                if part.first_buffered is None:
                    part.first_buffered = now
                self.first_fetched.setdefault(tp, records[0].offset)
                part.buffer.extend(records)
                part.buffered_bytes += sum(map(record_size, records))

    def flow_control(self, consumer: KafkaConsumer) -> None:
        """Pause a partition whose buffer holds two batches and `streams.buffer_bytes`; resume it once it holds
        less of either."""
        for tp, part in list(self.owned.items()):
            full = (len(part.buffer) >= 2 * self._mapping.event.batch_size
                    and part.buffered_bytes >= self._config.streams.buffer_bytes)
            if full and not part.paused:
                consumer.pause(tp)
                part.paused = True
            elif not full and part.paused:
                consumer.resume(tp)
                part.paused = False

    def all_paused(self) -> bool:
        parts = list(self.owned.values())
        return bool(parts) and all(part.paused for part in parts)

    def take(self, part: Partition, now: float) -> list[Any]:
        """The partition's next batch if one is due (full, or its window has passed); [] if not."""
        event = self._mapping.event
        with self._buffers_lock:
            if not part.buffer or part.first_buffered is None or (
                    len(part.buffer) < event.batch_size and now - part.first_buffered < event.batch_window_s):
                return []
            batch: list[Any] = []
            size = 0
            while part.buffer and len(batch) < event.batch_size:
                record_bytes = record_size(part.buffer[0])
                if batch and size + record_bytes > self._config.streams.max_batch_bytes:
                    break
                batch.append(part.buffer.popleft())
                size += record_bytes
            part.buffered_bytes -= size
            part.first_buffered = now if part.buffer else None
            return batch

    # -- commits ---------------------------------------------------------------------------

    def offer(self, tp: TopicPartition, offset: int) -> None:
        """Called from a batch task: `offset` (the next to read) may be committed."""
        with self._pending_lock:
            self._pending[tp] = max(offset, self._pending.get(tp, offset))

    def take_pending(self, partitions: list[TopicPartition] | None = None) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets offered for these partitions (default: all), no longer pending: the caller commits them."""
        with self._pending_lock:
            chosen = list(self._pending) if partitions is None else partitions
            taken = {tp: self._pending.pop(tp) for tp in chosen if tp in self._pending}
        return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in taken.items()}

    def commit_pending(self, consumer: KafkaConsumer, now: float) -> None:
        """Commit every offset offered for a partition still owned (on the poll thread), at most once every
        `streams.commit_interval_s`; the first after a quiet spell goes at once. A revoke and a release commit
        what finished without waiting for the interval (rebalance.py)."""
        if now - self._committed_at < self._config.streams.commit_interval_s:
            return
        offsets = {tp: meta for tp, meta in self.take_pending().items() if tp in self.owned}
        if not offsets:
            return
        try:
            consumer.commit(offsets, timeout_ms=KAFKA_TIMEOUT_MS)
        except CommitFailedError:
            # The group rebalanced: these partitions are another member's now, which re-reads from the
            # last committed offset (at least once; nothing is skipped).
            log.warning("commit refused after a rebalance", extra={"mapping": self._mapping.name})
            return
        except KafkaError as exc:
            # The broker is away (restarting, say) and kafka-python reconnects by itself: the offsets are
            # offered again at the next turn, so a commit is late, never lost and never past a batch.
            for tp, meta in offsets.items():
                self.offer(tp, meta.offset)
            self._outage.failed(exc, "commits wait until the broker answers")
            return
        self._outage.ok()
        self._committed_at = now
        for tp, meta in offsets.items():
            if (part := self.owned.get(tp)) is not None:
                part.committed = meta.offset
            labels = self.labels(tp)
            metrics.STREAM_COMMITTED.labels(*labels).set(meta.offset)
            metrics.STREAM_LAST_COMMIT.labels(*labels).set(time.time())

    def labels(self, tp: TopicPartition) -> tuple[str, str, str, str]:
        """The partition's metric labels."""
        return self._mapping.function, str(self._mapping.index), tp.topic, str(tp.partition)
