"""A fix for kafka-python 3.0's fetcher, applied when the streams role loads (tested with 3.0.12).

`Fetcher.fetched_records` gives back the records it parked for a paused partition only when its
in-line slot `_next_partition_records` is None; an exhausted PartitionRecords left in that slot is
falsy but not None, so a partition that was paused and resumed is never fetched again and its
consumer stalls for good, a few records short of the end (reproduced outside Lambent with a plain
consumer that pauses and resumes). Clearing the exhausted slot first restores the intended order.
"""

from __future__ import annotations

from typing import Any

from kafka.consumer.fetcher import Fetcher

_applied = False


def apply() -> None:
    global _applied
    if _applied or not hasattr(Fetcher, "fetched_records"):
        return
    original = Fetcher.fetched_records

    def fetched_records(self: Any, *args: Any, **kwargs: Any) -> Any:
        current = getattr(self, "_next_partition_records", None)
        if current is not None and not current:
            self._next_partition_records = None
        return original(self, *args, **kwargs)

    Fetcher.fetched_records = fetched_records
    _applied = True
