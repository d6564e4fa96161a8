"""`report_batch_item_failures`: read the handler's `batchItemFailures` answer, Lambda's way."""

from __future__ import annotations

from typing import Any, Sequence

from ..events.kafka import KafkaRecord


class MalformedItemFailures(ValueError):
    """The answer cannot be trusted; the whole batch counts as failed."""


def lowest_failed_offset(response: Any, batch: Sequence[KafkaRecord]) -> int | None:
    """The lowest offset the handler reported as failed, or None for full success.

    A missing, null or empty list is full success. An item with an empty or null identifier, an unknown
    key, another partition or an offset not in the batch makes the whole answer malformed.
    """
    if not isinstance(response, dict) or response.get("batchItemFailures") is None:
        return None
    failures = response["batchItemFailures"]
    if not isinstance(failures, list):
        raise MalformedItemFailures("batchItemFailures must be a list")
    partition = f"{batch[0].topic}-{batch[0].partition}"
    offsets = {record.offset for record in batch}
    failed = []
    for item in failures:
        if not isinstance(item, dict) or set(item) != {"itemIdentifier"}:
            raise MalformedItemFailures(f"each failure is {{\"itemIdentifier\": ...}}, not {item!r}")
        identifier = item["itemIdentifier"]
        if isinstance(identifier, dict):
            if set(identifier) - {"partition", "offset"} or "offset" not in identifier:
                raise MalformedItemFailures(f"itemIdentifier has partition and offset only: {identifier!r}")
            if identifier.get("partition", partition) != partition:
                raise MalformedItemFailures(f"partition {identifier['partition']!r} is not this batch's {partition}")
            identifier = identifier["offset"]
        if isinstance(identifier, bool) or identifier is None or identifier == "":
            raise MalformedItemFailures("an itemIdentifier is empty")
        try:
            offset = int(identifier)
        except (TypeError, ValueError):
            raise MalformedItemFailures(f"itemIdentifier {identifier!r} is not an offset") from None
        if offset not in offsets:
            raise MalformedItemFailures(f"offset {offset} is not in this batch")
        failed.append(offset)
    return min(failed) if failed else None
