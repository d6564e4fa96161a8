"""The streams' state owners against real Redis, and kafka-python's workarounds, in seconds (no Kafka, no SQS).

partition_state and sqs_state are the only code that knows their hashes' encoding: what they write must read
back as the API showed it before they existed (a cluster upgraded keeps working), and what older processes
wrote (the shapes below are written by hand, as tests/test_console.py does) must read through them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio
from kafka import TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.record import util
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from runtime import keys
from runtime.streams import compat, partition_state
from runtime.streams.partition_state import PartitionState
from runtime.streams.sqs_state import NOTHING_YET, Heartbeat, SqsStateWriter, read_states


def _state(partition: int, *, updated_ms: int, lag: int | None = 3) -> PartitionState:
    return PartitionState(topic="orders", partition=partition, owner="host:1", committed=10, high_watermark=13,
                          lag=lag, buffered=2, in_flight=True, last_poll_ms=updated_ms, updated_ms=updated_ms)


def _aread(url: str, function: str, index: int) -> list[PartitionState]:
    async def main() -> list[PartitionState]:
        conn = redis.asyncio.Redis.from_url(url)
        try:
            return await partition_state.aread(conn, function, index)
        finally:
            await conn.aclose()
    return asyncio.run(main())


def test_partition_state_is_written_as_the_api_has_always_shown_it(redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    partition_state.write(conn, "ticker", 1, [_state(2, updated_ms=5), _state(0, updated_ms=5, lag=None)], ttl_s=60)

    raw = conn.hgetall(keys.stream_state("ticker", 1))
    assert orjson.loads(raw[b"orders-0"]) == {
        "topic": "orders", "partition": 0, "owner": "host:1", "committed": 10, "highWatermark": 13, "lag": None,
        "buffered": 2, "inFlight": True, "lastPoll": 5, "updated": 5}
    assert list(orjson.loads(raw[b"orders-2"])) == ["topic", "partition", "owner", "committed", "highWatermark",
                                                    "lag", "buffered", "inFlight", "lastPoll", "updated"]
    assert 0 < conn.ttl(keys.stream_state("ticker", 1)) <= 60
    assert [state.partition for state in partition_state.read(conn, "ticker", 1)] == [0, 2]     # by partition
    assert _aread(redis_url, "ticker", 1) == partition_state.read(conn, "ticker", 1)
    conn.close()


def test_partition_state_written_by_hand_reads_back_field_for_field(redis_url: str) -> None:
    stored = {"topic": "orders", "partition": 1, "owner": "streams-host-1", "committed": 100,
              "highWatermark": 142, "lag": 42, "buffered": 0, "inFlight": False, "lastPoll": 7, "updated": 7}
    conn = redis.Redis.from_url(redis_url)
    conn.hset(keys.stream_state("ticker", 0), "orders-1", orjson.dumps(stored))

    [state] = partition_state.read(conn, "ticker", 0)

    assert (state.lag, state.high_watermark, state.updated_ms, state.in_flight) == (42, 142, 7, False)
    assert state.to_json() == stored and list(state.to_json()) == list(stored)
    assert state.is_fresh(now_ms=10_007, fresh_ms=10_000) and not state.is_fresh(now_ms=10_008, fresh_ms=10_000)
    assert partition_state.read(conn, "ticker", 5) == []
    conn.hset(keys.stream_state("ticker", 0), "orders-1", orjson.dumps({**stored, "newerField": 1}))
    assert partition_state.read(conn, "ticker", 0) == [state]           # what a newer process adds is left out
    conn.close()


def _read_sqs(url: str, mappings: list[tuple[str, str]], fresh_s: float = 10.0) -> list[Any]:
    async def main() -> list[Any]:
        conn = redis.asyncio.Redis.from_url(url)
        try:
            return await read_states(conn, mappings, fresh_s=fresh_s)
        finally:
            await conn.aclose()
    return asyncio.run(main())


def test_sqs_state_written_by_the_pollers_reads_as_the_api_shows_it(redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    now_ms = int(time.time() * 1000)
    writer = SqsStateWriter(conn, "ticker", "payments")
    writer.count(received=12, deleted=9, failed=3, throttled=0)
    writer.problem("the function failed (error)")
    live = writer.beat(Heartbeat(owner="host:77:abc", in_flight=2, at_ms=now_ms, pollers=2),
                       queue_arn="arn:aws:sqs:us-east-1:000000000000:payments", fresh_s=10.0)
    writer.beat(Heartbeat(owner="gone:1:def", in_flight=5, at_ms=now_ms - 60_000, pollers=2), queue_arn=None,
                fresh_s=10.0)

    [state, nothing] = _read_sqs(redis_url, [("ticker", "payments"), ("ticker", "other")])

    assert [beat.owner for beat in live.processes] == ["host:77:abc"]
    assert state.to_json() == {
        "received": 12, "deleted": 9, "failed": 3, "filtered": 0, "throttled": 0, "inFlight": 2,
        "processes": [{"owner": "host:77:abc", "in_flight": 2, "at": now_ms, "pollers": 2}],   # the stale one left out
        "lastProcessingResult": "PROBLEM: the function failed (error)", "lastError": "the function failed (error)",
        "queueArn": "arn:aws:sqs:us-east-1:000000000000:payments"}
    assert nothing.to_json()["lastProcessingResult"] == NOTHING_YET and nothing.in_flight == 0
    writer.ok()
    writer.leave("host:77:abc")
    [state] = _read_sqs(redis_url, [("ticker", "payments")])
    assert state.last_result == "OK" and state.last_error == "the function failed (error)" and state.processes == []
    assert _read_sqs(redis_url, []) == []
    conn.close()


def test_sqs_state_written_by_hand_reads_through_the_owner(redis_url: str) -> None:
    now_ms = int(time.time() * 1000)
    conn = redis.Redis.from_url(redis_url)
    conn.hset(keys.sqs_state("ticker", "payments"), mapping={
        "received": 4, "owner:h:1:x": orjson.dumps({"in_flight": 1, "at": now_ms, "pollers": 3}).decode()})

    [state] = _read_sqs(redis_url, [("ticker", "payments")])

    assert state.counts == {"received": 4, "deleted": 0, "failed": 0, "filtered": 0, "throttled": 0}
    assert state.in_flight == 1 and state.processes[0].pollers == 3 and state.last_error is None
    conn.close()


# -- kafka-python's workarounds --------------------------------------------------------------------------


def test_on_another_kafka_python_every_workaround_is_skipped_and_said_so(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(compat, "VERSION", "9.9.9")
    monkeypatch.setattr(compat, "_applied", False)
    before = Fetcher.fetched_records

    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        compat.apply()

    assert Fetcher.fetched_records is before                        # nothing patched
    skipped = [record for record in caplog.records if "skipped" in record.getMessage()]
    assert sorted(record.__dict__["workaround"] for record in skipped) == sorted(w.name for w in compat.ALL)
    assert all(record.__dict__["without_it"] for record in skipped)
    assert not any(workaround.active for workaround in compat.ALL)


def test_the_installed_kafka_python_is_one_the_workarounds_were_written_for() -> None:
    assert all(workaround.active for workaround in compat.ALL), compat.VERSION


@dataclass
class FakeConsumer:
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def resume(self, tp: TopicPartition) -> None:
        self.calls.append(("resume", tp.partition))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", offset))


def test_a_partition_idle_with_lag_is_read_again_from_its_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "STUCK_AFTER_S", 0.0)
    stuck, consumer, tp = compat.StuckFetch("m/0"), FakeConsumer(), TopicPartition("orders", 3)

    def check(**kwargs: Any) -> bool:
        return stuck.check(consumer, tp, **kwargs)

    assert not check(lag=5, busy=False, start=40)              # first seen idle: the clock starts
    assert not check(lag=5, busy=True, start=40)               # a batch runs: not stuck, the clock stops
    assert not check(lag=0, busy=False, start=40)              # caught up
    assert consumer.calls == []
    assert not check(lag=5, busy=False, start=40)
    assert check(lag=5, busy=False, start=40)                  # idle with lag, seen twice: restarted
    assert consumer.calls == [("resume", 3), ("seek", 40)]
    assert not check(lag=5, busy=False, start=40)              # and the clock starts again


def test_a_member_owning_nothing_rejoins_only_when_nobody_owns_the_topic_for_long() -> None:
    orphaned = compat.Orphaned()
    late = compat.ORPHANED_AFTER_S + 1

    assert not orphaned.check(owns_any=False, anyone_owns=False, now=0.0)       # the clock starts
    assert not orphaned.check(owns_any=False, anyone_owns=False, now=late - 2)
    assert not orphaned.check(owns_any=False, anyone_owns=True, now=late)       # someone consumes: reset
    assert not orphaned.check(owns_any=False, anyone_owns=False, now=late)
    assert not orphaned.check(owns_any=True, anyone_owns=False, now=2 * late)   # we own a partition: reset
    assert not orphaned.check(owns_any=False, anyone_owns=False, now=2 * late)
    assert orphaned.check(owns_any=False, anyone_owns=False, now=3 * late)
    assert not orphaned.check(owns_any=False, anyone_owns=False, now=3 * late)  # rejoining: the clock again


def test_record_batches_are_checked_by_the_c_crc32c(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for index in range(3):
        builder.append(index, timestamp=None, key=b"k", value=b"v" * 100, headers=[])
    batch = DefaultRecordBatch(bytes(builder.build()))
    assert compat.native_crc32c()
    assert batch.validate_crc()

    monkeypatch.setattr(util.calc_crc32c, "__defaults__", (util.crc32c_py,))    # as without the crc32c package
    monkeypatch.setattr(compat, "VERSION", "9.9.9")                            # (no patch applied twice)
    monkeypatch.setattr(compat, "_applied", False)
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        compat.apply()
    assert not compat.native_crc32c()
    assert any("pure Python" in record.getMessage() for record in caplog.records)
