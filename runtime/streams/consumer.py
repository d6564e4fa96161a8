"""One event source mapping's consumer: a poll thread that batches per partition and commits.

kafka-python's consumer is not thread-safe, so every call on it (poll, pause, commit) happens on this
thread. Handlers run on the executor's event loop as `BatchRun` tasks, one in flight per partition;
this thread only polls, hands out batches, and commits the offsets the tasks report. While a batch is
in flight the partition's next records wait in a buffer (the partition is paused when it fills).
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
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from .. import keys
from ..config import Config
from ..services import Services
from .batch import BatchRun, Mapping

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Partition:
    buffer: collections.deque[Any] = field(default_factory=collections.deque)
    first_buffered: float | None = None
    future: Future[None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    committed: int | None = None
    paused: bool = False


class MappingConsumer(ConsumerRebalanceListener):
    def __init__(self, mapping: Mapping, *, services: Services, loop: asyncio.AbstractEventLoop, config: Config,
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
        self._stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._thread = threading.Thread(target=self._run, name=f"streams-{mapping.name}", daemon=True)
        self.last_poll = time.monotonic()
        self._next_report = 0.0
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop intake, let in-flight batches finish (then commit), leave the group."""
        self._stopping.set()
        self._thread.join(timeout)

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
        while not self._stopping.is_set():
            try:
                self._consumer = self._connect()
                while not self._stopping.is_set():
                    self._poll_once()
            except KafkaError:
                log.warning("Kafka error; reconnecting", extra={"mapping": self.mapping.name}, exc_info=True)
                self._stopping.wait(1.0)
            except Exception:
                log.exception("consumer loop failed; restarting it", extra={"mapping": self.mapping.name})
                self._stopping.wait(1.0)
            finally:
                self._release(list(self._parts), commit=True)
                if self._consumer is not None:
                    try:
                        self._consumer.close(autocommit=False)
                    except Exception:
                        log.warning("closing the consumer failed", exc_info=True)
                    self._consumer = None
        log.info("consumer stopped", extra={"mapping": self.mapping.name})

    def _connect(self) -> KafkaConsumer:
        event = self.mapping.event
        wait_ms = int(self._max_wait_s() * 1000)
        consumer = KafkaConsumer(
            bootstrap_servers=self._config.kafka_bootstrap_servers,
            group_id=keys.stream_group(self.mapping.function, self.mapping.index, event.topic),
            client_id=f"lambent-{self._owner}",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if event.starting_position == "TRIM_HORIZON" else "latest",
            max_poll_records=max(500, event.batch_size * 2),
            metadata_max_age_ms=5000,                          # a topic created later is found within seconds
            max_poll_interval_ms=max(300_000, wait_ms + 60_000),
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            fetch_max_wait_ms=100,
        )
        consumer.subscribe([event.topic], listener=self)
        log.info("consumer started", extra={"mapping": self.mapping.name, "topic": event.topic})
        return consumer

    # -- the loop --------------------------------------------------------------------------

    def _poll_once(self) -> None:
        assert self._consumer is not None
        self.last_poll = time.monotonic()
        fetched = self._consumer.poll(timeout_ms=int(self._config.streams.poll_timeout_s * 1000))
        now = time.monotonic()
        for tp, records in fetched.items():
            part = self._parts.get(tp)
            if part is None:       # not ours any more (revoked during this poll)
                continue
            if part.first_buffered is None and records:
                part.first_buffered = now
            part.buffer.extend(records)
        event = self.mapping.event
        for tp, part in self._parts.items():
            if part.future is not None and part.done.is_set():
                part.future = None
            if part.future is None and part.buffer and part.first_buffered is not None and (
                    len(part.buffer) >= event.batch_size or now - part.first_buffered >= event.batch_window_s):
                self._dispatch(tp, part)
            full = len(part.buffer) >= 2 * event.batch_size
            if full and not part.paused:
                self._consumer.pause(tp)
                part.paused = True
            elif not full and part.paused:
                self._consumer.resume(tp)
                part.paused = False
        self._commit_pending()
        if now >= self._next_report:
            self._report()
            self._next_report = now + self._config.streams.state_interval_s

    def _dispatch(self, tp: TopicPartition, part: _Partition) -> None:
        batch: list[Any] = []
        size = 0
        while part.buffer and len(batch) < self.mapping.event.batch_size:
            record = part.buffer[0]
            record_size = len(record.value or b"") * 4 // 3 + len(record.key or b"") * 4 // 3 + 200
            if batch and size + record_size > self._config.streams.max_batch_bytes:
                break
            batch.append(part.buffer.popleft())
            size += record_size
        part.first_buffered = time.monotonic() if part.buffer else None
        part.stop = threading.Event()
        part.done = threading.Event()
        def commit(offset: int) -> None:
            self._offer(tp, offset)

        run = BatchRun(services=self._services, mapping=self.mapping, config=self._config,
                       deliver_topic=self._deliver_topic, commit=commit, stop=part.stop)
        done = part.done

        async def task() -> None:
            try:
                await run.run(batch)
            finally:
                done.set()

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
            self._consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in chosen.items()})
        except CommitFailedError:
            # The group rebalanced: these partitions are another member's now, which re-reads from the
            # last committed offset (at least once; nothing is skipped).
            log.warning("commit refused after a rebalance", extra={"mapping": self.mapping.name})
            return
        for tp, offset in chosen.items():
            self._parts[tp].committed = offset

    # -- rebalances --------------------------------------------------------------------------

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._parts.setdefault(tp, _Partition())
        log.info("partitions assigned", extra={"mapping": self.mapping.name,
                                               "partitions": sorted(tp.partition for tp in assigned)})

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._release(revoked, commit=True)

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        self._release(lost, commit=False)

    def _release(self, partitions: list[TopicPartition], *, commit: bool) -> None:
        """Stop the batches of these partitions after their current invocation, wait, commit, forget them."""
        mine = [(tp, self._parts[tp]) for tp in partitions if tp in self._parts]
        for _, part in mine:
            part.stop.set()
        deadline = time.monotonic() + self._max_wait_s()
        for tp, part in mine:
            if part.future is not None and not part.done.wait(max(0.0, deadline - time.monotonic())):
                part.future.cancel()          # past its timeout: cancelling kills its sandbox
                part.done.wait(5.0)
        if commit and self._consumer is not None and mine:
            try:
                self._commit_pending([tp for tp, _ in mine])
            except KafkaError:
                log.warning("final commit failed; those records will be read again", exc_info=True)
        with self._pending_lock:
            for tp, _ in mine:
                self._pending.pop(tp, None)
        for tp, _ in mine:
            del self._parts[tp]
        if mine:
            log.info("partitions released", extra={"mapping": self.mapping.name,
                                                   "partitions": sorted(tp.partition for tp, _ in mine)})

    # -- state for GET /functions/{name}/streams ----------------------------------------------

    def _report(self) -> None:
        if self._consumer is None or not self._parts:
            return
        now_ms = int(time.time() * 1000)
        fields: dict[Any, Any] = {}
        for tp, part in self._parts.items():
            high = self._consumer.highwater(tp)
            committed = part.committed
            if committed is None:
                try:
                    committed = self._consumer.committed(tp)
                except KafkaError:
                    committed = None
                part.committed = committed
            lag = None if high is None else max(0, high - (committed or 0))
            fields[f"{tp.topic}-{tp.partition}"] = orjson.dumps({
                "topic": tp.topic, "partition": tp.partition, "owner": self._owner, "committed": committed,
                "highWatermark": high, "lag": lag, "buffered": len(part.buffer),
                "inFlight": part.future is not None, "lastPoll": now_ms, "updated": now_ms})
        key = keys.stream_state(self.mapping.function, self.mapping.index)
        try:
            with self._state.pipeline() as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, max(60, int(self._config.streams.state_interval_s * 10)))
                pipe.execute()
        except redis.RedisError:
            log.warning("could not write stream state to Redis", exc_info=True)
