"""One event source mapping's consumer: a poll thread that batches per partition and commits.

kafka-python's consumer is not thread-safe, so every call on it (poll, pause, resume, commit) happens on
this thread. Handlers run on the executor's event loop, one task in flight per partition; this thread
polls into per-partition buffers, starts a partition's task when its buffer holds a batch (or the batch
window has passed), and commits the offsets the tasks report. A task that finishes a batch takes the
next one from the buffer itself when it is ready, so a backlogged partition runs batch after batch
without waiting for a poll to return; the partition is paused while its buffer is full. When every
partition is paused there is nothing to fetch, and this thread waits for a task to finish a batch
instead of sleeping in poll() (kafka-python sleeps a whole retry backoff then, 100 ms).

Outages: a Kafka error closes the consumer and connects again with backoff (logged once until it connects);
kafka-python itself reconnects through a broker restart. While Redis is down the partition state for the
console is not written and the orphan check is skipped (the outage is logged once, by RedisHealth); batches
wait for Redis only where they need it (see batch.py). Nothing is committed past what a batch finished.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.net.selector import KernelEvent
from kafka.structs import OffsetAndMetadata

from .. import keys
from ..config import Config
from ..observability import metrics
from ..observability.outage import UNREACHABLE
from ..redis_retry import Backoff
from ..wiring import WithAsyncQueue
from . import compat
from .batch import BatchRun, Mapping
from .clients import client_options

compat.apply()

log = logging.getLogger(__name__)

# Out of the group with nobody owning the topic this long (past the 10 s session timeout): rejoin.
ORPHANED_AFTER_S = 15.0
STUCK_AFTER_S = 5.0      # owned, behind, idle this long: the fetch is re-started from the last commit
PAUSED_POLL_S = 0.5      # with every partition paused, poll() still runs this often (rebalances, metadata)
CANCEL_WAIT_S = 2.0      # a batch cut off (its task cancelled, its sandbox killed) has ended within this
KAFKA_TIMEOUT_MS = 5000  # one blocking call to the broker (commit, committed offset, close)


@dataclass(eq=False)
class _Partition:
    buffer: collections.deque[Any] = field(default_factory=collections.deque)
    first_buffered: float | None = None
    future: Future[None] | None = None      # the partition's task: set and cleared on the poll thread
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    committed: int | None = None
    paused: bool = False
    idle_with_lag_since: float | None = None


class MappingConsumer:
    def __init__(self, mapping: Mapping, *, services: WithAsyncQueue, loop: asyncio.AbstractEventLoop, config: Config,
                 deliver_topic: Callable[[str, bytes, bytes], None], state_redis: redis.Redis) -> None:
        self.mapping = mapping
        self._services = services
        self._loop = loop
        self._config = config
        self._deliver_topic = deliver_topic
        self._state = state_redis
        self._parts: dict[TopicPartition, _Partition] = {}
        self._pending: dict[TopicPartition, int] = {}
        self._pending_lock = threading.Lock()
        self._buffers_lock = threading.Lock()      # every _Partition.buffer and first_buffered
        self._batch_done = threading.Event()       # a task finished: its partition may take more records
        self._last_fetch = 0.0
        self._first_fetched: dict[TopicPartition, int] = {}     # first offset this consumer ever read
        self._rewind: set[TopicPartition] = set()               # assigned again: seek to the last commit
        self._stopping = threading.Event()
        self._drain_until: float | None = None                  # stopping: in-flight batches end by then
        self._kafka_failing = False                             # a Kafka error was logged; not connected since
        self._consumer: KafkaConsumer | None = None
        self._thread = threading.Thread(target=self._run, name=f"streams-{mapping.name}", daemon=True)
        self.last_poll = time.monotonic()
        self._next_report = 0.0
        self._orphaned_since: float | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, drain_until: float | None = None) -> None:
        """Stop intake, let in-flight batches finish (then commit), leave the group. A batch still running at
        `drain_until` (time.monotonic(); default: its function's timeout from now) is cut off uncommitted:
        whoever owns the partition next reads it again."""
        self._drain_until = drain_until
        self._stopping.set()
        until = drain_until if drain_until is not None else time.monotonic() + self._max_wait_s()
        self._thread.join(max(0.0, until - time.monotonic()) + CANCEL_WAIT_S + 2 * KAFKA_TIMEOUT_MS / 1000)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stalled(self, now: float) -> bool:
        limit = max(self._config.streams.stall_s, self.mapping.event.batch_window_s + self._max_wait_s() + 30)
        return self.alive and now - self.last_poll > limit

    def _max_wait_s(self) -> float:
        latest = self._services.catalog.latest(self.mapping.function)
        return (latest.spec.timeout_s if latest else 900.0) + 5.0

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                self._consumer = self._connect()
                self._kafka_ok()
                backoff.reset()
                while not self._stopping.is_set():
                    self._poll_once()
            except KafkaError as exc:
                self._kafka_failed(exc, "reconnecting with backoff")
                self._stopping.wait(backoff.next_s())
            except Exception:
                log.exception("consumer loop failed; restarting it", extra={"mapping": self.mapping.name})
                self._stopping.wait(backoff.next_s())
            finally:
                self._release(list(self._parts), commit=True)
                self._close()
        log.info("consumer stopped", extra={"mapping": self.mapping.name})

    def _kafka_failed(self, exc: KafkaError, doing: str) -> None:
        """Logged once until Kafka answers again: a broker that is down fails every attempt the same way."""
        if not self._kafka_failing:
            log.warning("Kafka error; %s", doing, exc_info=True,
                        extra={"mapping": self.mapping.name, "error": str(exc) or type(exc).__name__})
            self._kafka_failing = True

    def _kafka_ok(self) -> None:
        if self._kafka_failing:
            log.info("Kafka is reachable again; consuming", extra={"mapping": self.mapping.name})
            self._kafka_failing = False

    def _close(self) -> None:
        if self._consumer is None:
            return
        try:
            self._consumer.close(autocommit=False, timeout_ms=KAFKA_TIMEOUT_MS)
        except Exception:
            log.warning("closing the consumer failed", exc_info=True)
        self._consumer = None

    def _connect(self) -> KafkaConsumer:
        event = self.mapping.event
        wait_ms = int(self._max_wait_s() * 1000)
        consumer = KafkaConsumer(
            **client_options(self._config),                    # bootstrap servers and the SASL login
            group_id=event.group(self.mapping.function, self.mapping.index),
            client_id=f"lambent-{self._owner}",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if event.starting_position == "TRIM_HORIZON" else "latest",
            max_poll_records=max(500, event.batch_size * 2),
            metadata_max_age_ms=5000,                          # a topic created later is found within seconds
            max_poll_interval_ms=max(300_000, wait_ms + 60_000),
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            fetch_max_wait_ms=100,
            reconnect_backoff_max_ms=5000,                     # a restarted broker is found within seconds
            allow_auto_create_topics=False,                    # a mapping reads a topic; it never makes one
        )
        # Join the group only once the topic's partitions are known: a member that joins first is assigned
        # nothing and is not told when the topic appears. A topic created later is picked up here.
        announced = False
        while not self._stopping.is_set():
            self.last_poll = time.monotonic()
            if consumer.partitions_for_topic(event.topic):
                break
            if not announced:
                log.warning("topic does not exist yet; waiting for it", extra={"mapping": self.mapping.name,
                                                                              "topic": event.topic})
                announced = True
            self._stopping.wait(1.0)
        consumer.subscribe([event.topic], listener=_Rebalance(self))
        log.info("consumer started", extra={"mapping": self.mapping.name, "topic": event.topic})
        return consumer

    # -- the loop --------------------------------------------------------------------------

    def _poll_once(self) -> None:
        assert self._consumer is not None
        self.last_poll = time.monotonic()
        self._batch_done.clear()     # before looking at the buffers: a batch ending from here on wakes the wait
        self._flow_control()
        if self._all_paused() and self.last_poll - self._last_fetch < PAUSED_POLL_S:
            self._batch_done.wait(self._config.streams.poll_timeout_s)
            fetched: dict[TopicPartition, list[Any]] = {}
        else:
            self._last_fetch = self.last_poll
            fetched = self._consumer.poll(timeout_ms=int(self._config.streams.poll_timeout_s * 1000))
        if self._rewind:
            fetched = self._rewind_assigned(fetched)
        now = time.monotonic()
        with self._buffers_lock:
            for tp, records in fetched.items():
                part = self._parts.get(tp)
                if part is None or not records:       # not ours any more (revoked during this poll)
                    continue
                if part.first_buffered is None:
                    part.first_buffered = now
                self._first_fetched.setdefault(tp, records[0].offset)
                part.buffer.extend(records)
        for tp, part in list(self._parts.items()):      # the rebalance listener runs on another thread
            if part.future is not None and part.done.is_set():
                part.future = None
            if part.future is None:
                with self._buffers_lock:
                    batch = self._take(part, now)
                if batch:
                    self._start(tp, part, batch)
        self._flow_control()
        self._commit_pending()
        if now >= self._next_report:
            self._report()
            self._next_report = now + self._config.streams.state_interval_s
            self._check_orphaned(now)

    def _flow_control(self) -> None:
        """Pause a partition whose buffer holds two batches; resume it once it holds less."""
        assert self._consumer is not None
        for tp, part in list(self._parts.items()):
            full = len(part.buffer) >= 2 * self.mapping.event.batch_size
            if full and not part.paused:
                self._consumer.pause(tp)
                part.paused = True
            elif not full and part.paused:
                self._consumer.resume(tp)
                part.paused = False

    def _all_paused(self) -> bool:
        parts = list(self._parts.values())
        return bool(parts) and all(part.paused for part in parts)

    def _take(self, part: _Partition, now: float) -> list[Any]:
        """The partition's next batch if one is due (full, or its window has passed); [] if not.
        Called with _buffers_lock held."""
        event = self.mapping.event
        if not part.buffer or part.first_buffered is None or (
                len(part.buffer) < event.batch_size and now - part.first_buffered < event.batch_window_s):
            return []
        batch: list[Any] = []
        size = 0
        while part.buffer and len(batch) < event.batch_size:
            record = part.buffer[0]
            record_size = len(record.value or b"") * 4 // 3 + len(record.key or b"") * 4 // 3 + 200
            if batch and size + record_size > self._config.streams.max_batch_bytes:
                break
            batch.append(part.buffer.popleft())
            size += record_size
        part.first_buffered = now if part.buffer else None
        return batch

    def _start(self, tp: TopicPartition, part: _Partition, batch: list[Any]) -> None:
        """Run `batch` and then, while the partition is not stopped, every batch that is due after it."""
        def commit(offset: int) -> None:
            self._offer(tp, offset)

        run = BatchRun(services=self._services, mapping=self.mapping, config=self._config,
                       deliver_topic=self._deliver_topic, commit=commit, stop=part.stop)
        done = part.done = threading.Event()

        async def task() -> None:
            records = batch
            failures = 0
            try:
                while records and not part.stop.is_set():
                    try:
                        await run.run(records)
                    except Exception:     # a fault nobody translated: the same batch again, never skipped
                        failures += 1
                        log.exception("batch failed unexpectedly; running it again", extra={
                            "mapping": self.mapping.name, "partition": tp.partition, "first_offset": records[0].offset})
                        await run.pause(failures)
                        continue
                    failures = 0
                    with self._buffers_lock:
                        records = self._take(part, time.monotonic())
                    self._batch_done.set()        # the poll thread may resume the partition now
            finally:
                done.set()
                self._batch_done.set()

        part.future = asyncio.run_coroutine_threadsafe(task(), self._loop)

    def _offer(self, tp: TopicPartition, offset: int) -> None:
        """Called from a batch task: `offset` (the next to read) may be committed."""
        with self._pending_lock:
            self._pending[tp] = max(offset, self._pending.get(tp, offset))

    def _commit_pending(self, only: list[TopicPartition] | None = None) -> None:
        assert self._consumer is not None
        with self._pending_lock:
            chosen = {tp: offset for tp, offset in self._pending.items() if only is None or tp in only}
            for tp in chosen:
                del self._pending[tp]
        chosen = {tp: offset for tp, offset in chosen.items() if tp in self._parts}
        if not chosen:
            return
        try:
            self._consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in chosen.items()},
                                  timeout_ms=KAFKA_TIMEOUT_MS)
        except CommitFailedError:
            # The group rebalanced: these partitions are another member's now, which re-reads from the
            # last committed offset (at least once; nothing is skipped).
            log.warning("commit refused after a rebalance", extra={"mapping": self.mapping.name})
            return
        except KafkaError as exc:
            # The broker is away (restarting, say) and kafka-python reconnects by itself: the offsets are
            # offered again at the next turn, so a commit is late, never lost and never past a batch.
            for tp, offset in chosen.items():
                self._offer(tp, offset)
            self._kafka_failed(exc, "commits wait until the broker answers")
            return
        self._kafka_ok()
        for tp, offset in chosen.items():
            self._parts[tp].committed = offset
            labels = (self.mapping.function, str(self.mapping.index), tp.topic, str(tp.partition))
            metrics.STREAM_COMMITTED.labels(*labels).set(offset)
            metrics.STREAM_LAST_COMMIT.labels(*labels).set(time.time())

    # -- rebalances --------------------------------------------------------------------------
    # kafka-python 3 calls the rebalance listener on its IO thread, where blocking calls are refused
    # and would stop heartbeats; the listener (_Rebalance) therefore awaits, and the pieces below
    # only touch our own state. Blocking work (seeks after an assignment) is left to the poll thread.

    def assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.setdefault(tp, _Partition())
        # kafka-python keeps the fetch position of a partition that is revoked and assigned again in one
        # rebalance; the records past the last commit were abandoned on revoke, so they are read again.
        self._rewind |= set(partitions)
        self._next_report = 0.0          # the previous owner's state of these partitions is replaced at once
        log.info("partitions assigned", extra={"mapping": self.mapping.name,
                                               "partitions": sorted(tp.partition for tp in partitions)})

    def _rewind_assigned(self, fetched: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        assert self._consumer is not None
        for tp in list(self._rewind):
            self._rewind.discard(tp)
            if tp not in self._parts:
                continue
            # Its paused flag survives the rebalance too, while our new _Partition says "not paused".
            self._consumer.resume(tp)
            committed = self._consumer.committed(tp, timeout_ms=KAFKA_TIMEOUT_MS)
            start = committed if committed is not None else self._first_fetched.get(tp)
            if start is not None:
                self._consumer.seek(tp, start)
                fetched.pop(tp, None)       # fetched from the stale position: read again from `start`
        return fetched

    def stop_batches(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Ask the batches of these partitions to stop after their current invocation; returns ours."""
        mine = [tp for tp in partitions if tp in self._parts]
        for tp in mine:
            self._parts[tp].stop.set()
        return mine

    def batches_done(self, partitions: list[TopicPartition]) -> bool:
        return all(self._parts[tp].future is None or self._parts[tp].done.is_set() for tp in partitions)

    def cancel_batches(self, partitions: list[TopicPartition], *, why: str = "rebalance") -> None:
        """Past the deadline: cancelling a batch's task kills its sandbox. Nothing of it is committed."""
        for tp in partitions:
            part = self._parts[tp]
            if part.future is not None and not part.done.is_set():
                log.warning("a batch was still running at the %s deadline; cut off, its records are read again",
                            why, extra={"mapping": self.mapping.name, "partition": tp.partition})
                part.future.cancel()

    def take_pending(self, partitions: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        with self._pending_lock:
            taken = {tp: self._pending.pop(tp) for tp in partitions if tp in self._pending}
        return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in taken.items()}

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop(tp, None)
            self._rewind.discard(tp)
        if partitions:
            log.info("partitions released", extra={"mapping": self.mapping.name,
                                                   "partitions": sorted(tp.partition for tp in partitions)})

    def release_wait_s(self) -> float:
        return self._max_wait_s()

    def _release(self, partitions: list[TopicPartition], *, commit: bool) -> None:
        """On the poll thread (shutdown, reconnect): stop, wait (until the batches' timeout, or the drain
        deadline once stopping), commit what finished, forget."""
        mine = self.stop_batches(partitions)
        timeout_at = time.monotonic() + self._max_wait_s()
        while not self.batches_done(mine) and time.monotonic() < self.release_deadline(timeout_at):
            time.sleep(0.02)
        self.cancel_batches(mine, why="shutdown" if self._stopping.is_set() else "reconnect")
        cancelled_by = time.monotonic() + CANCEL_WAIT_S
        for tp in mine:
            if self._parts[tp].future is not None:      # (a partition that never ran a batch has nothing to end)
                self._parts[tp].done.wait(max(0.0, cancelled_by - time.monotonic()))
        offsets = self.take_pending(mine)
        if commit and offsets and self._consumer is not None:
            try:
                self._consumer.commit(offsets, timeout_ms=KAFKA_TIMEOUT_MS)
            except KafkaError:
                log.warning("final commit failed; those records will be read again", exc_info=True)
        self.forget(mine)

    def release_deadline(self, timeout_at: float) -> float:
        """When batches being released must be done: at `timeout_at`, or sooner once the process is stopping."""
        if self._stopping.is_set() and self._drain_until is not None:
            return min(timeout_at, self._drain_until)
        return timeout_at

    def _unstick(self, tp: TopicPartition, part: _Partition, *, lag: int | None, committed: int | None) -> None:
        """A partition we own with records behind it, nothing buffered and nothing in flight for a while has
        stopped fetching (seen with kafka-python 3.0 after a rebalance): read it again from its last commit."""
        assert self._consumer is not None
        if not lag or part.buffer or part.future is not None:
            part.idle_with_lag_since = None
            return
        now = time.monotonic()
        if part.idle_with_lag_since is None:
            part.idle_with_lag_since = now
            return
        if now - part.idle_with_lag_since < STUCK_AFTER_S:
            return
        part.idle_with_lag_since = None
        start = committed if committed is not None else self._first_fetched.get(tp)
        log.warning("partition stopped fetching with records behind it; reading again from its commit",
                    extra={"mapping": self.mapping.name, "partition": tp.partition, "offset": start, "lag": lag})
        self._consumer.resume(tp)
        part.paused = False
        if start is not None:
            self._consumer.seek(tp, start)

    def _check_orphaned(self, now: float) -> None:
        """kafka-python 3.0 can lose a rebalance's answer and stay out of the group for good (it happens when
        a rebalance outlasts a poll). When this consumer owns nothing and no process has reported owning any
        partition of the topic for a while, nobody is consuming: reconnect."""
        if self._parts:
            self._orphaned_since = None
            return
        if self._services.health.down:
            return             # who owns what cannot be known meanwhile; the clock goes on afterwards
        try:
            raw = self._state.hgetall(keys.stream_state(self.mapping.function, self.mapping.index))
        except UNREACHABLE as exc:
            self._services.health.failed(exc)
            return
        fresh_ms = int(time.time() * 1000) - int(self._config.streams.state_interval_s * 5000)
        if any(orjson.loads(value)["updated"] >= fresh_ms for value in raw.values()):
            self._orphaned_since = None
            return
        if self._orphaned_since is None:
            self._orphaned_since = now
        elif now - self._orphaned_since > ORPHANED_AFTER_S:
            self._orphaned_since = None
            raise KafkaError("no partition of the topic is owned by any consumer: rejoining the group")

    # -- state for GET /functions/{name}/streams ----------------------------------------------

    def _report(self) -> None:
        if self._consumer is None or not self._parts:
            return
        now_ms = int(time.time() * 1000)
        fields: dict[Any, Any] = {}
        for tp, part in list(self._parts.items()):
            high = self._consumer.highwater(tp)
            committed = part.committed
            if committed is None:
                try:
                    committed = self._consumer.committed(tp, timeout_ms=KAFKA_TIMEOUT_MS)
                except KafkaError:
                    committed = None
                part.committed = committed
            lag = None if high is None else max(0, high - (committed or 0))
            self._unstick(tp, part, lag=lag, committed=committed)
            labels = (self.mapping.function, str(self.mapping.index), tp.topic, str(tp.partition))
            if lag is not None:
                metrics.STREAM_LAG.labels(*labels).set(lag)
            if committed is not None:
                metrics.STREAM_COMMITTED.labels(*labels).set(committed)
            fields[f"{tp.topic}-{tp.partition}"] = orjson.dumps({
                "topic": tp.topic, "partition": tp.partition, "owner": self._owner, "committed": committed,
                "highWatermark": high, "lag": lag, "buffered": len(part.buffer),
                "inFlight": part.future is not None, "lastPoll": now_ms, "updated": now_ms})
        key = keys.stream_state(self.mapping.function, self.mapping.index)
        if self._services.health.down:
            return             # the console shows the state again once Redis answers
        try:
            with self._state.pipeline() as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, max(60, int(self._config.streams.state_interval_s * 10)))
                pipe.execute()
        except UNREACHABLE as exc:
            self._services.health.failed(exc)
        except redis.RedisError:
            log.warning("could not write stream state to Redis", exc_info=True)


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: waits by yielding to its loop, so heartbeats go on meanwhile."""

    def __init__(self, owner: MappingConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        mine = self._owner.stop_batches(list(revoked))
        timeout_at = time.monotonic() + self._owner.release_wait_s()
        while not self._owner.batches_done(mine) and time.monotonic() < self._owner.release_deadline(timeout_at):
            await KernelEvent("_sleep", 0.02)
        self._owner.cancel_batches(mine)
        cancelled_deadline = time.monotonic() + 5.0
        while not self._owner.batches_done(mine) and time.monotonic() < cancelled_deadline:
            await KernelEvent("_sleep", 0.02)
        offsets = self._owner.take_pending(mine)
        if offsets and self._owner._consumer is not None:
            try:
                await self._owner._consumer.commit_async(offsets)
            except Exception:    # the new owner re-reads from the last commit: at least once, nothing lost
                log.warning("commit on revoke failed; those records will be read again", exc_info=True)
        self._owner.forget(mine)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owner.assigned(list(assigned))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        mine = self._owner.stop_batches(list(lost))
        self._owner.cancel_batches(mine)     # another member may own them already: stop at once
        self._owner.take_pending(mine)
        self._owner.forget(mine)
