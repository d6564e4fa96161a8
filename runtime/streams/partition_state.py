"""The owner of a Kafka mapping's partition state (the keys.stream_state hash): its record, its JSON, its reads.

Each consumer writes the partitions it owns every streams.state_interval_s (`write`); the API and the console
(GET /functions/{name}/streams) and the consumers' orphan check read them (`read`, `aread`). Only this module
knows the hash's fields ("topic-partition") and the JSON of their values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import orjson
import redis
import redis.asyncio

from .. import keys

# The JSON names of PartitionState's fields, as written since the first version (the console reads them).
_JSON_NAMES = {"high_watermark": "highWatermark", "in_flight": "inFlight", "last_poll_ms": "lastPoll",
               "updated_ms": "updated"}
_FIELD_NAMES = {json: name for name, json in _JSON_NAMES.items()}


@dataclass(frozen=True, kw_only=True)
class PartitionState:
    """One partition of one mapping, as its owner last reported it."""
    topic: str
    partition: int
    owner: str                      # host:pid of the streams process that owns it
    committed: int | None           # the next offset to read, as last committed (None: nothing committed yet)
    high_watermark: int | None
    lag: int | None                 # high_watermark - committed
    buffered: int                   # records fetched, not yet in a batch
    in_flight: bool                 # a batch of it is running
    last_poll_ms: int
    updated_ms: int

    @property
    def field(self) -> str:
        return f"{self.topic}-{self.partition}"

    def is_fresh(self, now_ms: int, fresh_ms: int) -> bool:
        """Reported within `fresh_ms`: its owner still lives (a stale record is of a process gone)."""
        return now_ms - self.updated_ms <= fresh_ms

    def to_json(self) -> dict[str, Any]:
        """The record as the API shows it (and as the hash stores it)."""
        return {_JSON_NAMES.get(name, name): value for name, value in asdict(self).items()}

    def to_redis(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_redis(cls, value: bytes | str) -> PartitionState:
        """A stored record; a field it does not know (written by a newer process) is left out."""
        decoded = {_FIELD_NAMES.get(name, name): item for name, item in orjson.loads(value).items()}
        return cls(**{name: item for name, item in decoded.items() if name in _FIELDS})


_FIELDS = {item.name for item in fields(PartitionState)}


def decode(raw: Mapping[Any, Any]) -> list[PartitionState]:
    """A mapping's hash (HGETALL) as records, by partition."""
    return sorted((PartitionState.from_redis(value) for value in raw.values()), key=lambda state: state.partition)


def write(conn: redis.Redis, function: str, index: int, states: list[PartitionState], *, ttl_s: int) -> None:
    """Replace these partitions' records (one round trip); the hash lapses `ttl_s` after the last report."""
    key = keys.stream_state(function, index)
    with conn.pipeline() as pipe:
        pipe.hset(key, mapping={state.field: state.to_redis() for state in states})
        pipe.expire(key, ttl_s)
        pipe.execute()


def read(conn: redis.Redis, function: str, index: int) -> list[PartitionState]:
    return decode(conn.hgetall(keys.stream_state(function, index)))


async def aread(conn: redis.asyncio.Redis, function: str, index: int) -> list[PartitionState]:
    return decode(await conn.hgetall(keys.stream_state(function, index)))
