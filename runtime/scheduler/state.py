"""A schedule's state in Redis: its last fire, its counters and the claims of its occurrences.

The only code that knows how they are stored (keys.schedule_last, keys.schedule_stats, keys.schedule_fired): the
scheduler writes through it, `GET /schedules` reads through it. A fire's claim, last fire and counts are written
in the transaction that enqueues its invocation (`Fire`, given to AsyncStore.accept_once), so a reader never sees
the invocation without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import redis
import redis.asyncio

from .. import keys
from ..asyncq.record import read_status

UTC = timezone.utc
CLAIM_TTL_S = 7 * 86400          # an occurrence's claim outlives any replica that could still fire it
FIRED, MISSED = "fired", "missed"     # LastFire.outcome: the occurrence was enqueued, or it was past the grace


@dataclass(frozen=True, kw_only=True)
class LastFire:
    """The last occurrence a replica handled (keys.schedule_last): fired with an invocation, or missed."""
    scheduled_ms: int                   # the occurrence's time
    request_id: str | None              # its invocation; None when missed
    fired_ms: int                       # when the replica handled it
    late_ms: int                        # how long after its time
    by: str | None                      # the replica, host:pid
    outcome: str | None                 # FIRED or MISSED

    @property
    def scheduled(self) -> datetime:
        return datetime.fromtimestamp(self.scheduled_ms / 1000, UTC)

    def to_redis(self) -> dict[Any, str | int]:      # Any: the field-name type hset accepts is its own union
        return {"scheduled_ms": self.scheduled_ms, "request_id": self.request_id or "", "fired_ms": self.fired_ms,
                "late_ms": self.late_ms, "by": self.by or "", "outcome": self.outcome or ""}

    @classmethod
    def from_redis(cls, raw: Mapping[bytes, bytes]) -> LastFire | None:
        """None for a schedule that never fired (no hash)."""
        if not raw:
            return None
        fields = {_text(key): _text(value) for key, value in raw.items()}
        return cls(scheduled_ms=int(fields["scheduled_ms"]), request_id=fields.get("request_id") or None,
                   fired_ms=int(fields["fired_ms"]), late_ms=int(fields["late_ms"]), by=fields.get("by"),
                   outcome=fields.get("outcome"))


@dataclass(frozen=True)
class Counters:
    """A schedule's counters (keys.schedule_stats): fired, late (fired after its time, within the grace), missed.
    `counts` holds those ever bumped, in the hash's order: a counter never bumped is absent, not 0."""
    counts: dict[str, int]

    @staticmethod
    def bumps(*, fired: int = 0, late: int = 0, missed: int = 0) -> dict[str, int]:
        """Counter -> increment (HINCRBY), for the counters that move only."""
        return {name: amount for name, amount in (("fired", fired), ("late", late), ("missed", missed)) if amount}

    @classmethod
    def from_redis(cls, raw: Mapping[bytes, bytes]) -> Counters:
        return cls({_text(key): int(value) for key, value in raw.items()})


@dataclass(frozen=True, kw_only=True)
class Fire:
    """One occurrence fired: what goes into its invocation's transaction (AsyncStore.accept_once). The claim
    (keys.schedule_fired, keyed by the occurrence's time) lets exactly one replica enqueue it."""
    function: str
    index: int
    fire_at: datetime
    last: LastFire
    late: bool                          # fired more than a second after its time
    missed: int                         # occurrences before it that the coalescing skipped

    @property
    def claim_key(self) -> str:
        return keys.schedule_fired(self.function, self.index, int(self.fire_at.timestamp()))

    @property
    def hashes(self) -> dict[str, dict[Any, Any]]:
        """Key -> fields to set with the invocation."""
        return {keys.schedule_last(self.function, self.index): self.last.to_redis()}

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Key -> counter -> increment, with the invocation."""
        return {keys.schedule_stats(self.function, self.index):
                Counters.bumps(fired=1, late=int(self.late), missed=self.missed)}


# -- the scheduler's side (blocking client) --------------------------------------------------------


def record_missed(connection: redis.Redis, *, function: str, index: int, last: LastFire, count: int) -> None:
    """An occurrence past its grace (and those the coalescing skipped before it, `count` in all): counted missed
    and recorded as the last fire, in one transaction."""
    with connection.pipeline() as pipe:
        pipe.hincrby(keys.schedule_stats(function, index), "missed", count)
        pipe.hset(keys.schedule_last(function, index), mapping=last.to_redis())
        pipe.execute()


def last_scheduled(connection: redis.Redis, *, function: str, index: int) -> datetime | None:
    """The time of the last occurrence any replica handled; None when the schedule never fired."""
    raw = connection.hget(keys.schedule_last(function, index), "scheduled_ms")
    return datetime.fromtimestamp(int(raw) / 1000, UTC) if raw is not None else None


# -- the gateway's side (asyncio client) -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScheduleState:
    """What `GET /schedules` shows of one schedule's state."""
    last: LastFire | None
    counters: Counters
    status: str | None                  # the status of the last fire's invocation, while its record lives


async def read_state(connection: redis.asyncio.Redis, *, function: str, index: int) -> ScheduleState:
    async with connection.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.schedule_last(function, index))
        pipe.hgetall(keys.schedule_stats(function, index))
        last_raw, stats_raw = await pipe.execute()
    last = LastFire.from_redis(last_raw)
    status = await read_status(connection, last.request_id) if last and last.request_id else None
    return ScheduleState(last=last, counters=Counters.from_redis(stats_raw), status=status.value if status else None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
