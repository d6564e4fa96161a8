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

This module is the poll loop and the state report (written through partition_state); flow control and commits
are partitions.py's, rebalances rebalance.py's, kafka-python's faults compat.py's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..config import Config
from ..observability import metrics
from ..observability.outage import UNREACHABLE
from ..redis_retry import Backoff
from ..wiring import WithAsyncQueue
from . import compat, partition_state
from .batch import BatchRun, Mapping
from .clients import client_options
from .partition_state import PartitionState
from .partitions import KAFKA_TIMEOUT_MS, KafkaOutage, Partition, Partitions
from .rebalance import CANCEL_WAIT_S, Handover, Rebalance
from .targets import ServiceTargets

log = logging.getLogger(__name__)

PAUSED_POLL_S = 0.5      # with every partition paused, poll() still runs this often (rebalances, metadata)


class MappingConsumer:
    """One mapping's consumer in this process: its poll thread, the batch tasks it starts, its state report."""

    def __init__(self, mapping: Mapping, *, services: WithAsyncQueue, loop: asyncio.AbstractEventLoop, config: Config,
                 deliver_topic: Callable[[str, bytes, bytes], None], state_redis: redis.Redis) -> None:
        self.mapping = mapping
        self._services = services
        self._loop = loop
        self._config = config
        self._targets = ServiceTargets(services, config, deliver_topic=deliver_topic)
        self._state = state_redis
        self._outage = KafkaOutage(mapping.name)
        self._partitions = Partitions(mapping, config, self._outage)
        self._stuck = compat.StuckFetch(mapping.name)
        self._orphaned = compat.Orphaned()
        self._handover = Handover(mapping.name, self._partitions, self._stuck, wait_s=self._max_wait_s,
                                  deadline=self._release_deadline, on_assigned=self._report_soon)
        self._batch_done = threading.Event()       # a task finished: its partition may take more records
        self._last_fetch = 0.0
        self._stopping = threading.Event()
        self._drain_until: float | None = None                  # stopping: in-flight batches end by then
        self._consumer: KafkaConsumer | None = None
        self._thread = threading.Thread(target=self._run, name=f"streams-{mapping.name}", daemon=True)
        self.last_poll = time.monotonic()
        self._next_report = 0.0
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

    def _release_deadline(self, timeout_at: float) -> float:
        """When batches being released must be done: at `timeout_at`, or sooner once the process is stopping."""
        if self._stopping.is_set() and self._drain_until is not None:
            return min(timeout_at, self._drain_until)
        return timeout_at

    def _report_soon(self) -> None:
        self._next_report = 0.0

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                self._consumer = self._connect()
                self._outage.ok()
                backoff.reset()
                while not self._stopping.is_set():
                    self._poll_once()
            except KafkaError as exc:
                self._outage.failed(exc, "reconnecting with backoff")
                self._stopping.wait(backoff.next_s())
            except Exception:
                log.exception("consumer loop failed; restarting it", extra={"mapping": self.mapping.name})
                self._stopping.wait(backoff.next_s())
            finally:
                self._handover.release(self._consumer, list(self._partitions.owned),
                                       why="shutdown" if self._stopping.is_set() else "reconnect")
                self._close()
        log.info("consumer stopped", extra={"mapping": self.mapping.name})

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
        consumer.subscribe([event.topic], listener=Rebalance(self._handover, lambda: self._consumer, self._partitions))
        log.info("consumer started", extra={"mapping": self.mapping.name, "topic": event.topic})
        return consumer

    # -- the loop --------------------------------------------------------------------------

    def _poll_once(self) -> None:
        assert self._consumer is not None
        partitions = self._partitions
        self.last_poll = time.monotonic()
        self._batch_done.clear()     # before looking at the buffers: a batch ending from here on wakes the wait
        partitions.flow_control(self._consumer)
        if partitions.all_paused() and self.last_poll - self._last_fetch < PAUSED_POLL_S:
            self._batch_done.wait(self._config.streams.poll_timeout_s)
            fetched: dict[TopicPartition, list[Any]] = {}
        else:
            self._last_fetch = self.last_poll
            fetched = self._consumer.poll(timeout_ms=int(self._config.streams.poll_timeout_s * 1000))
        fetched = self._handover.rewind(self._consumer, fetched)
        now = time.monotonic()
        partitions.buffer(fetched, now)
        for tp, part in list(partitions.owned.items()):      # the rebalance listener runs on another thread
            if part.future is not None and part.done.is_set():
                part.future = None
            if part.future is None:
                batch = partitions.take(part, now)
                if batch:
                    self._start(tp, part, batch)
        partitions.flow_control(self._consumer)
        partitions.commit_pending(self._consumer, time.monotonic())
        if now >= self._next_report:
            self._report()
            self._next_report = now + self._config.streams.state_interval_s
            self._check_orphaned(now)

    def _start(self, tp: TopicPartition, part: Partition, batch: list[Any]) -> None:
        """Run `batch` and then, while the partition is not stopped, every batch that is due after it."""
        def commit(offset: int) -> None:
            self._partitions.offer(tp, offset)

        run = BatchRun(targets=self._targets, health=self._services.health, mapping=self.mapping,
                       config=self._config, commit=commit, stop=part.stop)
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
                    records = self._partitions.take(part, time.monotonic())
                    self._batch_done.set()        # the poll thread may resume the partition now
            finally:
                done.set()
                self._batch_done.set()

        part.future = asyncio.run_coroutine_threadsafe(task(), self._loop)

    # -- state for GET /functions/{name}/streams ----------------------------------------------

    def _report(self) -> None:
        """Write the state of the partitions this consumer owns (partition_state), and their lag metrics."""
        if self._consumer is None or not self._partitions.owned:
            return
        now_ms = int(time.time() * 1000)
        states: list[PartitionState] = []
        for tp, part in list(self._partitions.owned.items()):
            high = self._consumer.highwater(tp)
            committed = part.committed
            if committed is None:
                try:
                    committed = self._consumer.committed(tp, timeout_ms=KAFKA_TIMEOUT_MS)
                except KafkaError:
                    committed = None
                part.committed = committed
            lag = None if high is None else max(0, high - (committed or 0))
            start = committed if committed is not None else self._partitions.first_fetched.get(tp)
            if self._stuck.check(self._consumer, tp, lag=lag, busy=bool(part.buffer) or part.future is not None,
                                 start=start):
                part.paused = False
            labels = self._partitions.labels(tp)
            if lag is not None:
                metrics.STREAM_LAG.labels(*labels).set(lag)
            if committed is not None:
                metrics.STREAM_COMMITTED.labels(*labels).set(committed)
            states.append(PartitionState(
                topic=tp.topic, partition=tp.partition, owner=self._owner, committed=committed, high_watermark=high,
                lag=lag, buffered=len(part.buffer), in_flight=part.future is not None, last_poll_ms=now_ms,
                updated_ms=now_ms))
        if self._services.health.down:
            return             # the console shows the state again once Redis answers
        try:
            partition_state.write(self._state, self.mapping.function, self.mapping.index, states,
                                  ttl_s=max(60, int(self._config.streams.state_interval_s * 10)))
        except UNREACHABLE as exc:
            self._services.health.failed(exc)
        except redis.RedisError:
            log.warning("could not write stream state to Redis", exc_info=True)

    def _check_orphaned(self, now: float) -> None:
        """compat.ORPHANED_MEMBER: owning nothing while no process has reported owning any partition of the topic
        for a while, this member was left out of its group: reconnect."""
        if self._partitions.owned:
            self._orphaned.check(owns_any=True, anyone_owns=True, now=now)
            return
        if self._services.health.down:
            return             # who owns what cannot be known meanwhile; the clock goes on afterwards
        try:
            states = partition_state.read(self._state, self.mapping.function, self.mapping.index)
        except UNREACHABLE as exc:
            self._services.health.failed(exc)
            return
        now_ms, fresh_ms = int(time.time() * 1000), int(self._config.streams.state_interval_s * 5000)
        if self._orphaned.check(owns_any=False, anyone_owns=any(state.is_fresh(now_ms, fresh_ms) for state in states),
                                now=now):
            raise KafkaError("no partition of the topic is owned by any consumer: rejoining the group")
