"""A stream consumer's flow control and commit cadence (runtime/streams/partitions.py), over a consumer that
records what it is asked: which partitions are paused, and which offsets are committed when. The consumer
itself is kafka-python's against a real broker in test_streams.py; here the rules, in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from runtime.config import Config
from runtime.functions.spec import KafkaEvent
from runtime.streams.batch import Mapping
from runtime.streams.partitions import KafkaOutage, Partition, Partitions, record_size

TP = TopicPartition("orders", 0)


@dataclass
class Record:
    offset: int
    value: bytes
    key: bytes | None = b"k"


@dataclass
class RecordingConsumer:
    """The calls Partitions makes on the poll thread's consumer."""
    paused: set[TopicPartition] = field(default_factory=set)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


def partitions(**streams: Any) -> Partitions:
    config = Config.model_validate({"streams": streams})
    mapping = Mapping(function="consumer", index=0, event=KafkaEvent(topic=TP.topic, batch_size=10))
    owned = Partitions(mapping, config, KafkaOutage(mapping.name))
    owned.owned[TP] = Partition()
    return owned


def records(first: int, count: int, size: int) -> list[Record]:
    return [Record(offset, b"v" * size) for offset in range(first, first + count)]


def test_small_records_are_fetched_ahead_up_to_the_byte_budget_then_paused_and_resumed() -> None:
    budget = 30 * record_size(Record(0, b"v" * 100))           # thirty small records: three batches
    owned, consumer = partitions(buffer_bytes=budget), RecordingConsumer()

    owned.buffer({TP: records(0, 25, 100)}, now=0.0)           # over two batches, under the budget: still fetching
    owned.flow_control(consumer)
    assert consumer.paused == set()
    owned.buffer({TP: records(25, 5, 100)}, now=0.0)
    owned.flow_control(consumer)
    assert consumer.paused == {TP}

    batch = owned.take(owned.owned[TP], now=0.0)
    assert [r.offset for r in batch] == list(range(10))
    owned.flow_control(consumer)
    assert consumer.paused == set()
    assert owned.owned[TP].buffered_bytes == 20 * record_size(batch[0])


def test_large_records_pause_at_two_batches_as_before() -> None:
    owned, consumer = partitions(buffer_bytes=1024), RecordingConsumer()
    owned.buffer({TP: records(0, 19, 10_000)}, now=0.0)
    owned.flow_control(consumer)
    assert consumer.paused == set()                           # over the budget, but not two batches yet
    owned.buffer({TP: records(19, 1, 10_000)}, now=0.0)
    owned.flow_control(consumer)
    assert consumer.paused == {TP}


def test_offsets_are_committed_at_most_once_an_interval_and_the_first_at_once() -> None:
    owned, consumer = partitions(commit_interval_s=0.1), RecordingConsumer()

    owned.commit_pending(consumer, now=10.0)                  # nothing offered: nothing sent, no clock started
    owned.offer(TP, 5)
    owned.commit_pending(consumer, now=10.01)                 # the first after a quiet spell goes at once
    owned.offer(TP, 9)
    owned.commit_pending(consumer, now=10.05)
    owned.offer(TP, 12)
    owned.commit_pending(consumer, now=10.10)
    assert consumer.commits == [{TP: 5}]
    owned.commit_pending(consumer, now=10.111)                # the interval has passed: the highest offered
    assert consumer.commits == [{TP: 5}, {TP: 12}]
    assert owned.owned[TP].committed == 12


def test_an_interval_of_zero_commits_every_turn() -> None:
    owned, consumer = partitions(commit_interval_s=0), RecordingConsumer()
    for offset in (3, 6, 9):
        owned.offer(TP, offset)
        owned.commit_pending(consumer, now=1.0)
    assert consumer.commits == [{TP: 3}, {TP: 6}, {TP: 9}]
