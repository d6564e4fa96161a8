"""Lambda's `aws:sqs` event, and how its `batchItemFailures` answer is read."""

from __future__ import annotations

import base64
from typing import Any, Sequence

# The system attributes Lambda passes in `attributes`, as ReceiveMessage names them.
_SYSTEM_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp",
                      "SequenceNumber", "MessageGroupId", "MessageDeduplicationId", "AWSTraceHeader",
                      "DeadLetterQueueSourceArn")


def _b64(value: Any) -> str:
    return base64.b64encode(value).decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """ReceiveMessage's MessageAttributeValue in Lambda's lower-camel spelling; binary values base64."""
    item: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues") or []),
        "binaryListValues": [_b64(entry) for entry in value.get("BinaryListValues") or []],
        "dataType": value.get("DataType", "String"),
    }
    if "StringValue" in value:
        item["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        item["binaryValue"] = _b64(value["BinaryValue"])
    return item


def sqs_record(message: dict[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    """One message of ReceiveMessage (boto3's dict) as a record of Lambda's event."""
    attributes = message.get("Attributes") or {}
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {name: attributes[name] for name in _SYSTEM_ATTRIBUTES if name in attributes},
        "messageAttributes": {name: _message_attribute(value)
                              for name, value in (message.get("MessageAttributes") or {}).items()},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def sqs_event(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": list(records)}


class MalformedItemFailures(ValueError):
    """The answer cannot be trusted; the whole batch counts as failed (as Lambda)."""


def failed_message_ids(response: Any, batch: Sequence[dict[str, Any]]) -> set[str]:
    """The messageIds the handler reported as failed (empty: the whole batch succeeded).

    As Lambda: no answer, a null or empty `batchItemFailures`, or an answer that is not an object is full
    success; an item with an empty, null or unknown `itemIdentifier`, or another key, fails the whole batch.
    """
    if not isinstance(response, dict) or response.get("batchItemFailures") is None:
        return set()
    failures = response["batchItemFailures"]
    if not isinstance(failures, list):
        raise MalformedItemFailures("batchItemFailures must be a list")
    known = {record["messageId"] for record in batch}
    failed = set()
    for item in failures:
        if not isinstance(item, dict) or set(item) != {"itemIdentifier"}:
            raise MalformedItemFailures(f"each failure is {{\"itemIdentifier\": messageId}}, not {item!r:.200}")
        identifier = item["itemIdentifier"]
        if not isinstance(identifier, str) or not identifier:
            raise MalformedItemFailures("an itemIdentifier is empty or not a string")
        if identifier not in known:
            raise MalformedItemFailures(f"itemIdentifier {identifier!r:.100} is not a messageId of this batch")
        failed.add(identifier)
    return failed
