"""An `sqs` mapping's state as the API and console show it, read from what its pollers write (sqs.py)."""

from __future__ import annotations

import time
from typing import Any, Mapping

import orjson

COUNTERS = ("received", "deleted", "failed", "filtered", "throttled")


def read_state(raw: Mapping[Any, Any], *, fresh_s: float) -> dict[str, Any]:
    """A mapping's state (its keys.sqs_state hash) as the API and console show it: the cluster's counters, the
    messages in flight and the pollers of the processes whose heartbeat is fresh, the last result."""
    fields = {_text(name): _text(value) for name, value in raw.items()}
    now = int(time.time() * 1000)
    owners = []
    for name, value in fields.items():
        if name.startswith("owner:"):
            beat = orjson.loads(value)
            if now - int(beat.get("at", 0)) <= fresh_s * 1000:
                owners.append({"owner": name.removeprefix("owner:"), **beat})
    state: dict[str, Any] = {name: int(fields.get(name, 0)) for name in COUNTERS}
    state.update(inFlight=sum(int(owner.get("in_flight", 0)) for owner in owners), processes=owners,
                 lastProcessingResult=fields.get("last_result", "No records processed"),
                 lastError=fields.get("last_error"), queueArn=fields.get("queue_arn"))
    return state


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
