"""How an `sqs` batch is cut and settled: which messages the function sees (`Filters`, Lambda's filter_criteria),
the parts that keep each event under streams.max_batch_bytes (`parts`), and which messages are deleted given the
failures (`Settlement`: in a FIFO queue a failed message keeps every later one of its group)."""

from __future__ import annotations

from typing import Any, Iterable

import orjson

from ..functions.filters import Policy, compile_pattern

RECORD_OVERHEAD = 1024       # bytes a record adds to its body in the event's JSON (ids, attributes, ARN)

Record = dict[str, Any]      # one record of the event (events.sqs.sqs_record)


class Filters:
    """A mapping's filter_criteria: a record is handled when any pattern matches it (all, without patterns)."""

    def __init__(self, patterns: Iterable[dict[str, Any]]) -> None:
        self._policies: list[Policy] = [compile_pattern(pattern) for pattern in patterns]

    def wanted(self, record: Record) -> bool:
        if not self._policies:
            return True
        body = record["body"]
        parsed: Any = body
        if body[:1] in ("{", "["):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = body
        subject = {**record, "body": parsed}
        return any(policy.matches(subject) for policy in self._policies)


def parts(records: list[Record], *, limit_bytes: int) -> list[list[Record]]:
    """The batch split so that each part's event stays under `limit_bytes` (Lambda's 6 MB)."""
    split: list[list[Record]] = []
    size = 0
    for record in records:
        record_size = len(record["body"].encode("utf-8", "replace")) + RECORD_OVERHEAD
        if not split or size + record_size > limit_bytes:
            split.append([])
            size = 0
        split[-1].append(record)
        size += record_size
    return split


class Settlement:
    """One batch's outcome, part after part. In a FIFO queue a group with a failure keeps the rest of the group
    (not run, not deleted), so the group's order holds through retries."""

    def __init__(self, *, fifo: bool) -> None:
        self._fifo = fifo
        self._failed_groups: set[str] = set()

    def runnable(self, part: list[Record]) -> list[Record]:
        """The records of `part` to run: in a FIFO queue, none of a group that failed earlier in the batch."""
        return [record for record in part if not self._fifo or group(record) not in self._failed_groups]

    def succeeded(self, part: list[Record], failed: set[str]) -> list[Record]:
        """The records of `part` to delete, given the messageIds that failed (an empty set: none; every id: all)."""
        if not self._fifo:
            return [record for record in part if record["messageId"] not in failed]
        keep = []
        for record in part:
            name = group(record)
            if record["messageId"] in failed:
                self._failed_groups.add(name)
            if name not in self._failed_groups:
                keep.append(record)
        return keep


def group(record: Record) -> str:
    """A FIFO record's MessageGroupId ("" in a standard queue)."""
    return str(record["attributes"].get("MessageGroupId", ""))
