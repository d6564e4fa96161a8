"""Rebalance handling of one mapping's consumer: partitions assigned, revoked, lost, and released on shutdown.

kafka-python 3 calls the rebalance listener (`Rebalance`) on its IO thread, where blocking calls are refused
and would stop heartbeats; the listener therefore waits by yielding to kafka-python's loop (compat.loop_sleep),
and `Handover`'s pieces only touch our own state. Blocking work (the seeks after an assignment, `rewind`) is
left to the poll thread, as is `release` (shutdown, reconnect). A partition handed over keeps what its finished
batches committed; a batch cut off at the deadline is read again by whoever owns the partition next.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError

from . import compat
from .partitions import KAFKA_TIMEOUT_MS, Partition, Partitions

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 2.0      # a batch cut off (its task cancelled, its sandbox killed) has ended within this
_REVOKE_CANCEL_WAIT_S = 5.0
_WAIT_STEP_S = 0.02


class Handover:
    """What happens to owned partitions when they change hands.

    `wait_s()`: how long a batch may still run (its function's timeout); `deadline(timeout_at)`: when batches
    being released must be done (sooner than `timeout_at` once the process is stopping); `on_assigned()`: called
    after an assignment (the consumer reports its state at once, replacing the previous owner's)."""

    def __init__(self, mapping: str, partitions: Partitions, stuck: compat.StuckFetch, *,
                 wait_s: Callable[[], float], deadline: Callable[[float], float],
                 on_assigned: Callable[[], None]) -> None:
        self._mapping, self._partitions, self._stuck = mapping, partitions, stuck
        self.wait_s, self.deadline, self._on_assigned = wait_s, deadline, on_assigned
        self._rewind: set[TopicPartition] = set()       # assigned again: seek to the last commit

    def assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.owned.setdefault(tp, Partition())
        # kafka-python keeps the fetch position of a partition that is revoked and assigned again in one
        # rebalance; the records past the last commit were abandoned on revoke, so they are read again.
        self._rewind |= set(partitions)
        self._on_assigned()
        log.info("partitions assigned", extra={"mapping": self._mapping,
                                               "partitions": sorted(tp.partition for tp in partitions)})

    def rewind(self, consumer: KafkaConsumer, fetched: dict[TopicPartition, list[Any]]
               ) -> dict[TopicPartition, list[Any]]:
        """On the poll thread: seek the partitions assigned since the last poll to their last commit; what was
        fetched for them from the stale position is dropped."""
        for tp in list(self._rewind):
            self._rewind.discard(tp)
            if tp not in self._partitions.owned:
                continue
            # Its paused flag survives the rebalance too, while our new Partition says "not paused".
            consumer.resume(tp)
            committed = consumer.committed(tp, timeout_ms=KAFKA_TIMEOUT_MS)
            start = committed if committed is not None else self._partitions.first_fetched.get(tp)
            if start is not None:
                consumer.seek(tp, start)
                fetched.pop(tp, None)
        return fetched

    def stop_batches(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Ask the batches of these partitions to stop after their current invocation; returns ours."""
        mine = [tp for tp in partitions if tp in self._partitions.owned]
        for tp in mine:
            self._partitions.owned[tp].stop.set()
        return mine

    def batches_done(self, partitions: list[TopicPartition]) -> bool:
        return not any(self._partitions.owned[tp].running for tp in partitions)

    def cancel_batches(self, partitions: list[TopicPartition], *, why: str = "rebalance") -> None:
        """Past the deadline: cancelling a batch's task kills its sandbox. Nothing of it is committed."""
        for tp in partitions:
            part = self._partitions.owned[tp]
            if part.future is not None and part.running:
                log.warning("a batch was still running at the %s deadline; cut off, its records are read again",
                            why, extra={"mapping": self._mapping, "partition": tp.partition})
                part.future.cancel()

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.owned.pop(tp, None)
            self._rewind.discard(tp)
            self._stuck.forget(tp)
        if partitions:
            log.info("partitions released", extra={"mapping": self._mapping,
                                                   "partitions": sorted(tp.partition for tp in partitions)})

    def release(self, consumer: KafkaConsumer | None, partitions: list[TopicPartition], *, why: str) -> None:
        """On the poll thread (shutdown, reconnect): stop, wait (until the batches' timeout, or the drain
        deadline once stopping), commit what finished, forget."""
        mine = self.stop_batches(partitions)
        timeout_at = time.monotonic() + self.wait_s()
        while not self.batches_done(mine) and time.monotonic() < self.deadline(timeout_at):
            time.sleep(_WAIT_STEP_S)
        self.cancel_batches(mine, why=why)
        cancelled_by = time.monotonic() + CANCEL_WAIT_S
        for tp in mine:
            if self._partitions.owned[tp].future is not None:      # (one that never ran a batch has nothing to end)
                self._partitions.owned[tp].done.wait(max(0.0, cancelled_by - time.monotonic()))
        offsets = self._partitions.take_pending(mine)
        if offsets and consumer is not None:
            try:
                consumer.commit(offsets, timeout_ms=KAFKA_TIMEOUT_MS)
            except KafkaError:
                log.warning("final commit failed; those records will be read again", exc_info=True)
        self.forget(mine)


class Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: waits by yielding to its loop, so heartbeats go on meanwhile."""

    def __init__(self, handover: Handover, consumer: Callable[[], KafkaConsumer | None],
                 partitions: Partitions) -> None:
        self._handover = handover
        self._consumer = consumer
        self._partitions = partitions

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        handover = self._handover
        mine = handover.stop_batches(list(revoked))
        timeout_at = time.monotonic() + handover.wait_s()
        while not handover.batches_done(mine) and time.monotonic() < handover.deadline(timeout_at):
            await compat.loop_sleep(_WAIT_STEP_S)
        handover.cancel_batches(mine)
        cancelled_deadline = time.monotonic() + _REVOKE_CANCEL_WAIT_S
        while not handover.batches_done(mine) and time.monotonic() < cancelled_deadline:
            await compat.loop_sleep(_WAIT_STEP_S)
        offsets = self._partitions.take_pending(mine)
        consumer = self._consumer()
        if offsets and consumer is not None:
            try:
                await consumer.commit_async(offsets)
            except Exception:    # the new owner re-reads from the last commit: at least once, nothing lost
                log.warning("commit on revoke failed; those records will be read again", exc_info=True)
        handover.forget(mine)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._handover.assigned(list(assigned))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        mine = self._handover.stop_batches(list(lost))
        self._handover.cancel_batches(mine)     # another member may own them already: stop at once
        self._partitions.take_pending(mine)
        self._handover.forget(mine)
