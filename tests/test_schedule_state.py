"""A schedule's state (runtime/scheduler/state.py) against a real Redis, and the clock that hands APScheduler's
occurrences to `fire` (runtime/scheduler/clock.py): no scheduler process, seconds in all."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import orjson
import pytest
import redis
import redis.asyncio

from runtime import keys
from runtime.asyncq.store import AsyncStore
from runtime.config import Config
from runtime.functions.expressions import Rate
from runtime.scheduler.clock import Clock
from runtime.scheduler.state import (CLAIM_TTL_S, FIRED, MISSED, Fire, LastFire, ScheduleState, last_scheduled,
                                     read_state, record_missed)

from .helpers import wait_until

UTC = timezone.utc
AT = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)       # an occurrence, in whole seconds as every schedule's


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def state_of(redis_url: str, function: str, index: int) -> ScheduleState:
    async def read() -> ScheduleState:
        connection = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await read_state(connection, function=function, index=index)
        finally:
            await connection.aclose()
    return asyncio.run(read())


def last_fire(*, request_id: str | None, outcome: str, late_ms: int = 250) -> LastFire:
    scheduled_ms = int(AT.timestamp() * 1000)
    return LastFire(scheduled_ms=scheduled_ms, request_id=request_id, fired_ms=scheduled_ms + late_ms,
                    late_ms=late_ms, by="host:42", outcome=outcome)


def accept(store: AsyncStore, fire: Fire) -> bool:
    assert fire.last.request_id is not None
    return store.accept_once(claim_key=fire.claim_key, claim_ttl_s=CLAIM_TTL_S, function=fire.function,
                             qualifier="$LATEST", payload=orjson.dumps({}), trigger="schedule",
                             request_id=fire.last.request_id, extra=fire.hashes, counts=fire.counts)


def test_a_fire_written_with_its_invocation_is_read_back_as_the_gateway_shows_it(client: redis.Redis,
                                                                                  redis_url: str) -> None:
    # given a fire, late and after two skipped occurrences, enqueued through the async store's claim
    store = AsyncStore(client, Config())
    fire = Fire(function="tick", index=1, fire_at=AT, last=last_fire(request_id="req-1", outcome=FIRED, late_ms=1500),
                late=True, missed=2)
    assert accept(store, fire)
    # when the state is read as GET /schedules reads it
    state = state_of(redis_url, "tick", 1)
    # then every field of the last fire, the counters and the invocation's status are there
    assert state.last == fire.last and state.last.scheduled == AT
    assert state.counters.counts == {"fired": 1, "late": 1, "missed": 2}
    assert state.status == "queued"
    # and the claim is the occurrence's, holding its request id for a week
    claim = keys.schedule_fired("tick", 1, int(AT.timestamp()))
    assert client.get(claim) == b"req-1" and 0 < client.ttl(claim) <= CLAIM_TTL_S
    assert last_scheduled(client, function="tick", index=1) == AT


def test_a_second_replica_firing_the_same_occurrence_writes_nothing(client: redis.Redis, redis_url: str) -> None:
    store = AsyncStore(client, Config())
    first = Fire(function="tick", index=0, fire_at=AT, last=last_fire(request_id="req-a", outcome=FIRED),
                 late=False, missed=0)
    other = Fire(function="tick", index=0, fire_at=AT, last=last_fire(request_id="req-b", outcome=FIRED, late_ms=900),
                 late=False, missed=0)
    assert accept(store, first)
    assert not accept(store, other)
    state = state_of(redis_url, "tick", 0)
    assert state.counters.counts == {"fired": 1}                  # a counter never bumped is absent, not 0
    assert state.last is not None and state.last.request_id == "req-a" and state.last.late_ms == 250
    assert not client.exists(keys.invocation("req-b"))


def test_a_missed_occurrence_is_counted_and_recorded_without_an_invocation(client: redis.Redis,
                                                                           redis_url: str) -> None:
    record_missed(client, function="tick", index=0, last=last_fire(request_id=None, outcome=MISSED), count=3)
    state = state_of(redis_url, "tick", 0)
    assert state.counters.counts == {"missed": 3}
    assert state.last is not None and state.last.outcome == MISSED and state.last.request_id is None
    assert state.status is None
    # the hash keeps the layout a running cluster has: every field, the request id empty
    assert client.hgetall(keys.schedule_last("tick", 0)) == {
        b"scheduled_ms": str(int(AT.timestamp() * 1000)).encode(), b"request_id": b"",
        b"fired_ms": str(int(AT.timestamp() * 1000) + 250).encode(), b"late_ms": b"250", b"by": b"host:42",
        b"outcome": b"missed"}


def test_a_schedule_that_never_fired_has_no_last_fire_and_no_counters(client: redis.Redis, redis_url: str) -> None:
    state = state_of(redis_url, "quiet", 0)
    assert state.last is None and state.counters.counts == {} and state.status is None
    assert last_scheduled(client, function="quiet", index=0) is None


def test_counters_are_read_in_the_order_redis_holds_them(client: redis.Redis, redis_url: str) -> None:
    client.hset(keys.schedule_stats("tick", 0), mapping={"missed": 3, "fired": 7})
    assert list(state_of(redis_url, "tick", 0).counters.counts.items()) == [("missed", 3), ("fired", 7)]


# -- the clock --------------------------------------------------------------------------------------


class Recorder:
    """A `fire` that records what it is handed, and can be held to stand for one stuck on Redis."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[datetime]]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, job_id: str, run_times: list[datetime]) -> None:
        self.calls.append((job_id, run_times))
        self.release.wait(10)


@pytest.fixture
def clock() -> Iterator[tuple[Clock, Recorder]]:
    recorder = Recorder()
    made = Clock(recorder)
    made.start()
    yield made, recorder
    recorder.release.set()
    made.stop()


def _just_passed() -> datetime:
    """The occurrence of rate(1 second) that has just passed: due at once, and the next one a second away at most."""
    return datetime.fromtimestamp(int(time.time()), UTC)


def test_the_clock_hands_fire_the_occurrences_scheduled_time(clock: tuple[Clock, Recorder]) -> None:
    made, recorder = clock
    first = _just_passed()
    made.add("tick/0", Rate(1), first)
    wait_until(lambda: len(recorder.calls) >= 2, timeout=5, message="two occurrences")
    assert recorder.calls[0] == ("tick/0", [first])
    assert recorder.calls[1] == ("tick/0", [first + timedelta(seconds=1)])
    assert made.drain(time.monotonic() + 5) == 0


def test_an_occurrence_due_while_its_fire_still_runs_is_skipped_and_drain_counts_the_stuck_one(
        clock: tuple[Clock, Recorder], caplog: pytest.LogCaptureFixture) -> None:
    made, recorder = clock
    recorder.release.clear()                       # the first fire hangs, as on a Redis that does not answer
    with caplog.at_level(logging.WARNING, logger="runtime.scheduler.clock"):
        made.add("tick/0", Rate(1), _just_passed())
        wait_until(lambda: "schedule fire skipped" in caplog.text, timeout=5, message="the next occurrence skipped")
    assert len(recorder.calls) == 1
    assert made.drain(time.monotonic() + 0.1) == 1          # still running at the deadline
    recorder.release.set()
    assert made.drain(time.monotonic() + 5) == 0


def test_a_removed_schedule_is_handed_no_more_occurrences(clock: tuple[Clock, Recorder]) -> None:
    made, recorder = clock
    made.add("tick/0", Rate(1), _just_passed())
    wait_until(lambda: recorder.calls, timeout=5, message="a first occurrence")
    made.remove("tick/0")
    handed = len(recorder.calls)
    made.add("other/0", Rate(1), _just_passed() + timedelta(seconds=1))   # a clock: its fire comes a second on
    wait_until(lambda: any(job == "other/0" for job, _ in recorder.calls), timeout=5, message="the other schedule")
    assert [job for job, _ in recorder.calls[handed:]] == ["other/0"]
