"""The records of an async invocation, and the only code that knows their Redis encoding.

`InvocationRecord` is the hash `lambent:inv:<id>` (keys.invocation): its dataclass fields are the hash's
fields, encoded and decoded by their types, so a new field is one line in that class. `DeadLetter` is the JSON a
function's DLQ hash holds per request id. `Status` is the record's `status` field; the store's Lua scripts get its
strings as ARGV from here.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import orjson
import redis.asyncio

from .. import keys


class Status(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead-lettered"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = (Status.SUCCEEDED, Status.DEAD_LETTERED)


@dataclass(frozen=True, kw_only=True)
class InvocationRecord:
    """One async invocation as its hash holds it. Optional fields that are None are absent from the hash."""
    function: str
    qualifier: str
    payload: bytes                       # the event, as the caller sent it
    status: Status = Status.QUEUED
    attempts: int = 0                    # handler runs so far (a throttled one does not count)
    throttles: int = 0
    delivery: int = 1                    # hand-overs to RQ; a job of another delivery is stale
    received_ms: int
    updated_ms: int
    history: list[dict[str, Any]] = field(default_factory=list)   # one entry per attempt, as the API shows it
    trigger: str = "async"
    trace_id: str | None = None          # the caller's X-Amzn-Trace-Id, carried by every attempt
    started_ms: int | None = None        # when the last attempt started
    next_ms: int | None = None           # when the next attempt is due (retrying, throttled)
    executed_version: str | None = None
    result: bytes | None = None          # the handler's response (JSON) of the attempt that succeeded
    error: bytes | None = None           # the error (JSON) of the last attempt that failed

    @classmethod
    def new(cls, *, function: str, qualifier: str, payload: bytes, trigger: str, received_ms: int,
            delivery: int = 1, trace_id: str | None = None,
            history: list[dict[str, Any]] | None = None) -> InvocationRecord:
        """A queued invocation that no attempt has run yet."""
        return cls(function=function, qualifier=qualifier, payload=payload, trigger=trigger, received_ms=received_ms,
                   updated_ms=received_ms, delivery=delivery, trace_id=trace_id or None, history=history or [])

    def to_redis(self) -> dict[str, str | bytes]:
        """The hash's fields (HSET mapping): numbers as decimal text, None left out."""
        return {name: _encode(value) for name, value in self._values() if value is not None}

    def changes(self, before: InvocationRecord) -> dict[str, str | bytes]:
        """The fields of `to_redis` whose value differs from `before`'s (what an update of it writes)."""
        old = dict(before._values())
        return {name: _encode(value) for name, value in self._values()
                if value is not None and value != old[name]}

    def _values(self) -> list[tuple[str, Any]]:
        return [(item.name, getattr(self, item.name)) for item in dataclasses.fields(self)]

    @classmethod
    def from_redis(cls, raw: Mapping[bytes, bytes]) -> InvocationRecord:
        """From HGETALL's reply. Fields a record may lack (older writers) take their defaults."""
        got = {name.decode(): value for name, value in raw.items() if value is not None}
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name in got:
                values[item.name] = _DECODERS[item.name](got[item.name])
        values.setdefault("payload", b"")
        values.setdefault("updated_ms", values.get("received_ms"))
        return cls(**values)


def _encode(value: Any) -> str | bytes:
    if isinstance(value, Status):
        return value.value
    if isinstance(value, list):
        return orjson.dumps(value).decode()
    if isinstance(value, bytes):
        return value
    return str(value)


# How a field's hash value reads back, by the field's type (annotation): a new field of one of these types needs
# nothing but its line in InvocationRecord (a type not listed here fails at import, below).
_DECODE: dict[str, Callable[[bytes], Any]] = {
    "str": bytes.decode, "str | None": bytes.decode,
    "int": int, "int | None": int,
    "bytes": bytes, "bytes | None": bytes,
    "Status": lambda value: Status(value.decode()),
    "list[dict[str, Any]]": lambda value: orjson.loads(value or b"[]"),
}
_DECODERS = {item.name: _DECODE[str(item.type)] for item in dataclasses.fields(InvocationRecord)}


def as_text(fields: Mapping[str, str | bytes]) -> dict[str, str]:
    """Fields of `to_redis` / `changes` as text, for a Lua script that takes them as a JSON object."""
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in fields.items()}


async def read_status(connection: redis.asyncio.Redis, request_id: str) -> Status | None:
    """The status of an invocation, read alone (for views that show it beside other state); None when its
    record is gone (finished ones are kept `async.result_ttl_s`)."""
    raw = await connection.hget(keys.invocation(request_id), "status")
    return Status(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """An invocation given up: Lambda's destination record and every attempt, kept in the function's DLQ until
    it is redriven or purged (it outlives the invocation's record)."""
    request_id: str
    function: str
    qualifier: str
    dead_lettered_at: str                # ISO 8601, ms
    record: dict[str, Any]               # Lambda's destination record (events/destination.py)
    attempts: list[dict[str, Any]]       # the invocation's history

    def to_json(self) -> dict[str, Any]:
        """As the DLQ API shows it, and as it is stored."""
        return {"requestId": self.request_id, "function": self.function, "qualifier": self.qualifier,
                "deadLetteredAt": self.dead_lettered_at, "record": self.record, "attempts": self.attempts}

    def to_redis(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_redis(cls, raw: bytes | str) -> DeadLetter:
        entry = orjson.loads(raw)
        return cls(request_id=entry["requestId"], function=entry["function"], qualifier=entry["qualifier"],
                   dead_lettered_at=entry["deadLetteredAt"], record=entry["record"],
                   attempts=entry.get("attempts", []))
