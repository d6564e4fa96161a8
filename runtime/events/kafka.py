"""Lambda's self-managed Kafka event, and the record an on_failure destination receives for a batch."""

from __future__ import annotations

import base64
from typing import Any, Protocol, Sequence

from .destination import iso_ms


class KafkaRecord(Protocol):
    """What we need of kafka-python's ConsumerRecord."""
    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


_TIMESTAMP_TYPES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def record_json(record: KafkaRecord) -> dict[str, Any]:
    """One record as Lambda writes it: base64 key and value, headers as {name: [byte, ...]}."""
    item: dict[str, Any] = {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": _TIMESTAMP_TYPES.get(record.timestamp_type, "NO_TIMESTAMP_TYPE"),
        "value": _b64(record.value),
        "headers": [{name: list(value or b"")} for name, value in (record.headers or [])],
    }
    if record.key is not None:     # Lambda leaves the key out of a record that has none
        item["key"] = _b64(record.key)
    return item


def kafka_event(records: Sequence[KafkaRecord], *, bootstrap_servers: str) -> dict[str, Any]:
    """`{"eventSource": "SelfManagedKafka", "bootstrapServers", "records": {"topic-partition": [...]}}`."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(f"{record.topic}-{record.partition}", []).append(record_json(record))
    return {"eventSource": "SelfManagedKafka", "bootstrapServers": bootstrap_servers, "records": grouped}


def batch_failure_record(*, records: Sequence[KafkaRecord], request_id: str, function_arn: str, condition: str,
                         invoke_count: int, executed_version: str | None, error: Any, bootstrap_servers: str,
                         now_ms: int, include_payload: bool = True) -> dict[str, Any]:
    """What on_failure receives for a batch given up: Lambda's fields plus the batch's position
    (`KafkaBatchInfo`) and, unless it is too big, the event itself (`payload`)."""
    first, last = records[0], records[-1]
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_ms(now_ms),
        "requestContext": {"requestId": request_id, "functionArn": function_arn, "condition": condition,
                           "approximateInvokeCount": invoke_count},
        "KafkaBatchInfo": {
            "batchSize": len(records), "bootstrapServers": bootstrap_servers,
            "topic": first.topic, "partition": first.partition,
            "firstRecordOffset": first.offset, "lastRecordOffset": last.offset,
            "firstRecordTimestamp": iso_ms(first.timestamp), "lastRecordTimestamp": iso_ms(last.timestamp),
        },
        "responsePayload": error,
    }
    if executed_version is not None:
        record["responseContext"] = {"statusCode": 200, "executedVersion": executed_version,
                                     "functionError": "Unhandled"}
    if include_payload:
        record["payload"] = kafka_event(records, bootstrap_servers=bootstrap_servers)
    return record
