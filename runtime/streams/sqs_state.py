"""The owner of an `sqs` mapping's state (the keys.sqs_state hash): its fields, its writes, its typed reads.

The hash holds the cluster's counters (`COUNTERS`, HINCRBY), the last result and error, the queue's ARN, and one
heartbeat per poller process ("owner:<process>" -> JSON). The pollers (sqs.py) write through `SqsStateWriter`;
the API and the console read `SqsState` (`read_states`: several mappings in one round trip). Only this module
knows the field names and the heartbeat's JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson
import redis
import redis.asyncio

from .. import keys

COUNTERS = ("received", "deleted", "failed", "filtered", "throttled")
NOTHING_YET = "No records processed"      # the last result while the pollers wrote none
_OWNER = "owner:"


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """One poller process's part: its messages in flight and pollers, as of `at_ms`."""
    owner: str
    in_flight: int
    at_ms: int
    pollers: int

    def to_redis(self) -> str:
        return orjson.dumps({"in_flight": self.in_flight, "at": self.at_ms, "pollers": self.pollers}).decode()

    @classmethod
    def from_redis(cls, owner: str, value: bytes | str) -> Heartbeat:
        beat = orjson.loads(value)
        return cls(owner=owner, in_flight=int(beat.get("in_flight", 0)), at_ms=int(beat.get("at", 0)),
                   pollers=int(beat.get("pollers", 0)))

    def to_json(self) -> dict[str, Any]:
        return {"owner": self.owner, "in_flight": self.in_flight, "at": self.at_ms, "pollers": self.pollers}


@dataclass(frozen=True, kw_only=True)
class SqsState:
    """A mapping's state across the cluster; `processes`: the pollers whose heartbeat is fresh."""
    counts: dict[str, int]
    processes: list[Heartbeat] = field(default_factory=list)
    last_result: str = NOTHING_YET
    last_error: str | None = None
    queue_arn: str | None = None

    @property
    def in_flight(self) -> int:
        return sum(process.in_flight for process in self.processes)

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any], *, fresh_s: float) -> SqsState:
        fields = {_text(name): _text(value) for name, value in raw.items()}
        now_ms = int(time.time() * 1000)
        beats = (Heartbeat.from_redis(name.removeprefix(_OWNER), value)
                 for name, value in fields.items() if name.startswith(_OWNER))
        return cls(counts={name: int(fields.get(name, 0)) for name in COUNTERS},
                   processes=[beat for beat in beats if now_ms - beat.at_ms <= fresh_s * 1000],
                   last_result=fields.get("last_result", NOTHING_YET), last_error=fields.get("last_error"),
                   queue_arn=fields.get("queue_arn"))

    def to_json(self) -> dict[str, Any]:
        """The state as GET /functions/{name}/streams shows it."""
        return {**self.counts, "inFlight": self.in_flight, "processes": [beat.to_json() for beat in self.processes],
                "lastProcessingResult": self.last_result, "lastError": self.last_error, "queueArn": self.queue_arn}


async def read_states(conn: redis.asyncio.Redis, mappings: list[tuple[str, str]], *,
                      fresh_s: float) -> list[SqsState]:
    """The state of each (function, queue name) mapping, read in one round trip."""
    if not mappings:
        return []
    async with conn.pipeline(transaction=False) as pipe:
        for function, queue in mappings:
            pipe.hgetall(keys.sqs_state(function, queue))
        raws = await pipe.execute()
    return [SqsState.from_redis(raw, fresh_s=fresh_s) for raw in raws]


class SqsStateWriter:
    """What one process's pollers of a mapping write. Redis errors reach the caller."""

    def __init__(self, conn: redis.Redis, function: str, queue: str) -> None:
        self._redis = conn
        self._key = keys.sqs_state(function, queue)

    def count(self, **counts: int) -> None:
        """Add to the cluster's counters (names from COUNTERS)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for name, value in counts.items():
                if value:
                    pipe.hincrby(self._key, name, value)
            pipe.execute()

    def ok(self) -> None:
        self._redis.hset(self._key, mapping={"last_result": "OK"})

    def problem(self, reason: str) -> None:
        self._redis.hset(self._key, mapping={"last_result": f"PROBLEM: {reason}", "last_error": reason,
                                             "last_error_ms": int(time.time() * 1000)})

    def beat(self, heartbeat: Heartbeat, *, queue_arn: str | None, fresh_s: float) -> SqsState:
        """Write this process's heartbeat (and the queue's ARN once known); the state it is part of, as read in
        the same round trip (`fresh_s`: how recent a heartbeat counts)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._key, _OWNER + heartbeat.owner, heartbeat.to_redis())
            if queue_arn is not None:
                pipe.hset(self._key, "queue_arn", queue_arn)
            pipe.hgetall(self._key)
            raw = pipe.execute()[-1]
        return SqsState.from_redis(raw, fresh_s=fresh_s)

    def leave(self, owner: str) -> None:
        """This process polls the mapping no more."""
        self._redis.hdel(self._key, _OWNER + owner)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
