"""Pure rules of stream batches: batchItemFailures answers and the Kafka event shape."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime.events.kafka import kafka_event
from runtime.streams.items import MalformedItemFailures, lowest_failed_offset


@dataclass
class Record:
    offset: int
    topic: str = "orders"
    partition: int = 0
    timestamp: int = 1700000000000
    timestamp_type: int = 0
    key: bytes | None = b"k"
    value: bytes | None = b"v"
    headers: Sequence[tuple[str, bytes | None]] = field(default_factory=list)


BATCH = [Record(offset) for offset in (10, 11, 12, 13)]


@pytest.mark.parametrize("answer", [None, "ok", 3, {}, {"batchItemFailures": None}, {"batchItemFailures": []},
                                    {"other": 1}])
def test_missing_null_or_empty_failures_are_full_success(answer: Any) -> None:
    assert lowest_failed_offset(answer, BATCH) is None


def test_lowest_reported_offset_is_where_the_retry_starts() -> None:
    answer = {"batchItemFailures": [{"itemIdentifier": {"partition": "orders-0", "offset": 12}},
                                    {"itemIdentifier": {"partition": "orders-0", "offset": 11}}]}
    assert lowest_failed_offset(answer, BATCH) == 11


@pytest.mark.parametrize("identifier", [12, "12", {"offset": 12}])
def test_a_bare_offset_is_accepted_too(identifier: Any) -> None:
    assert lowest_failed_offset({"batchItemFailures": [{"itemIdentifier": identifier}]}, BATCH) == 12


@pytest.mark.parametrize("item", [
    {"itemIdentifier": None}, {"itemIdentifier": ""}, {"itemIdentifier": {}},
    {"itemIdentifier": 99},                                               # not in the batch
    {"itemIdentifier": {"partition": "orders-1", "offset": 12}},          # another partition
    {"itemIdentifier": {"partition": "orders-0", "offset": 12, "x": 1}},  # unknown key
    {"itemIdentifier": 12, "extra": True}, {"id": 12}, "12", {"itemIdentifier": "twelve"},
    {"itemIdentifier": True},
])
def test_a_malformed_item_fails_the_whole_batch(item: Any) -> None:
    with pytest.raises(MalformedItemFailures):
        lowest_failed_offset({"batchItemFailures": [item]}, BATCH)


def test_failures_that_are_not_a_list_are_malformed() -> None:
    with pytest.raises(MalformedItemFailures):
        lowest_failed_offset({"batchItemFailures": {"itemIdentifier": 12}}, BATCH)


def test_kafka_event_has_lambdas_self_managed_shape() -> None:
    records = [Record(5, key=b"user-1", value=b'{"n":1}', headers=[("trace", b"ab")]),
               Record(6, key=None, value=None, timestamp_type=1)]
    event = kafka_event(records, bootstrap_servers="127.0.0.1:9092")
    assert event["eventSource"] == "SelfManagedKafka"
    assert event["bootstrapServers"] == "127.0.0.1:9092"
    assert list(event["records"]) == ["orders-0"]
    first, second = event["records"]["orders-0"]
    assert first == {"topic": "orders", "partition": 0, "offset": 5, "timestamp": 1700000000000,
                     "timestampType": "CREATE_TIME", "key": base64.b64encode(b"user-1").decode(),
                     "value": base64.b64encode(b'{"n":1}').decode(), "headers": [{"trace": [97, 98]}]}
    assert "key" not in second and second["value"] is None and second["timestampType"] == "LOG_APPEND_TIME"
