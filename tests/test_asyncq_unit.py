"""The async invocation's rules and state changes, without a worker: RetryPolicy/decide as values, and every
AsyncStore transition (its Lua and its transactions) against a real Redis, one clean database per test."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from typing import Any, Iterator

import orjson
import pytest
import redis

from runtime import keys
from runtime.asyncq.dlq import DeadLetters
from runtime.asyncq.policy import MAX_THROTTLE_DELAY_S, RetryPolicy, decide
from runtime.asyncq.record import DeadLetter, InvocationRecord, Status
from runtime.asyncq.store import AsyncStore, NewInvocation, Started, job_id, now_ms, request_id_of
from runtime.config import Config
from runtime.events.destination import CONDITION_EVENT_AGE_EXCEEDED, CONDITION_RETRIES_EXHAUSTED
from runtime.executor.result import Outcome

LEASE_S = 10.0
QUEUED_CHECK_S = 60.0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def store(client: redis.Redis) -> AsyncStore:
    config = Config.model_validate({"async": {"lease_s": LEASE_S, "queued_check_s": QUEUED_CHECK_S}})
    return AsyncStore(client, config)


def policy(**overrides: Any) -> RetryPolicy:
    given: dict[str, Any] = {"max_retry_attempts": 2, "retry_delays_s": (60.0, 120.0), "max_event_age_s": 3600.0,
                             "jitter": 0.1, "throttle_delay_s": 1.0}
    return RetryPolicy(**{**given, **overrides})


def record_of(client: redis.Redis, request_id: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = client.hgetall(keys.invocation(request_id))  # type: ignore[assignment]
    return {name.decode(): value.decode() for name, value in raw.items()}


def lease(client: redis.Redis, request_id: str) -> float | None:
    return client.zscore(keys.ASYNC_LEASES, request_id)


def queued_jobs(store: AsyncStore) -> list[str]:
    return [raw.decode() for raw in store.redis.lrange(store.queue.key, 0, -1)]  # type: ignore[union-attr]


def accepted(store: AsyncStore, **fields: Any) -> str:
    given = {"function": "fn", "qualifier": "$LATEST", "payload": b'{"n": 1}', "trigger": "async"}
    return store.accept(**{**given, **fields})


def lapse(client: redis.Redis, request_id: str) -> None:
    """Its lease expired (as after a lost worker or a lost job)."""
    client.zadd(keys.ASYNC_LEASES, {request_id: 0})


def retried(started: Started, due_ms: int) -> InvocationRecord:
    return replace(started.record, status=Status.RETRYING, updated_ms=now_ms(), next_ms=due_ms)


# -- RetryPolicy and decide -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"max_retry_attempts": 3}, {"max_retry_attempts": -1},
                                       {"retry_delays_s": (1.0, -1.0)}, {"max_event_age_s": 0},
                                       {"jitter": 1.0}, {"jitter": -0.1}])
def test_a_retry_policy_refuses_values_out_of_range(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        policy(**overrides)


def test_retry_delays_follow_the_configured_list_within_the_jitter() -> None:
    rules = policy()
    for _ in range(200):
        assert 54.0 <= rules.retry_delay_s(1) <= 66.0
        assert 108.0 <= rules.retry_delay_s(2) <= 132.0
        assert 108.0 <= rules.retry_delay_s(5) <= 132.0          # past the list: its last delay
    assert policy(retry_delays_s=()).retry_delay_s(1) == 0.0
    assert policy(jitter=0.0).retry_delay_s(1) == 60.0


def test_throttle_backoff_doubles_from_the_first_delay_up_to_a_minute() -> None:
    rules = policy(throttle_delay_s=1.0)
    for _ in range(200):
        assert 0.9 <= rules.throttle_delay(1) <= 1.1
        assert 3.6 <= rules.throttle_delay(3) <= 4.4
        assert MAX_THROTTLE_DELAY_S * 0.9 <= rules.throttle_delay(40) <= MAX_THROTTLE_DELAY_S * 1.1


def test_decide_succeeds_retries_and_dead_letters_by_attempts() -> None:
    now = 1_000_000_000
    rules = policy(jitter=0.0)
    assert decide(Outcome.SUCCESS, policy=rules, attempts=1, throttles=0, received_ms=now,
                  now_ms=now).status is Status.SUCCEEDED
    first = decide(Outcome.ERROR, policy=rules, attempts=1, throttles=0, received_ms=now, now_ms=now)
    assert (first.status, first.due_ms, first.condition) == (Status.RETRYING, now + 60_000, None)
    second = decide(Outcome.TIMEOUT, policy=rules, attempts=2, throttles=0, received_ms=now, now_ms=now)
    assert (second.status, second.due_ms) == (Status.RETRYING, now + 120_000)
    exhausted = decide(Outcome.CRASH, policy=rules, attempts=3, throttles=0, received_ms=now, now_ms=now)
    assert (exhausted.status, exhausted.due_ms, exhausted.condition) == (
        Status.DEAD_LETTERED, None, CONDITION_RETRIES_EXHAUSTED)
    no_retries = decide(Outcome.ERROR, policy=policy(max_retry_attempts=0), attempts=1, throttles=0,
                        received_ms=now, now_ms=now)
    assert no_retries.condition == CONDITION_RETRIES_EXHAUSTED


def test_decide_dead_letters_an_event_whose_next_attempt_would_be_past_its_age() -> None:
    now = 1_000_000_000
    rules = policy(jitter=0.0, max_event_age_s=100.0)
    late = decide(Outcome.ERROR, policy=rules, attempts=1, throttles=0, received_ms=now - 50_000, now_ms=now)
    assert (late.status, late.condition) == (Status.DEAD_LETTERED, CONDITION_EVENT_AGE_EXCEEDED)
    in_time = decide(Outcome.ERROR, policy=rules, attempts=1, throttles=0, received_ms=now + 50_000, now_ms=now)
    assert in_time.status is Status.RETRYING


def test_decide_requeues_a_throttled_event_with_backoff_until_its_age_runs_out() -> None:
    now = 1_000_000_000
    rules = policy(jitter=0.0, throttle_delay_s=2.0, max_event_age_s=60.0)
    throttled = decide(Outcome.THROTTLED, policy=rules, attempts=5, throttles=2, received_ms=now, now_ms=now)
    assert (throttled.status, throttled.due_ms) == (Status.QUEUED, now + 4_000)     # attempts do not count
    too_old = decide(Outcome.THROTTLED, policy=rules, attempts=0, throttles=1, received_ms=now - 59_000,
                     now_ms=now)
    assert (too_old.status, too_old.condition) == (Status.DEAD_LETTERED, CONDITION_EVENT_AGE_EXCEEDED)


# -- the record -------------------------------------------------------------------------------------------


def test_a_record_round_trips_through_its_hash_and_updates_only_what_changed() -> None:
    record = InvocationRecord.new(function="fn", qualifier="live", payload=b"\xff{}", trigger="schedule",
                                  received_ms=1234, trace_id="Root=1-abc")
    assert record.to_redis() == {
        "function": "fn", "qualifier": "live", "payload": b"\xff{}", "status": "queued", "attempts": "0",
        "throttles": "0", "delivery": "1", "received_ms": "1234", "updated_ms": "1234", "history": "[]",
        "trigger": "schedule", "trace_id": "Root=1-abc"}
    full = replace(record, status=Status.RETRYING, attempts=2, started_ms=1300, next_ms=9000, executed_version="4",
                   result=b'{"r":1}', error=b'{"errorType":"E"}', history=[{"attempt": 1}, {"attempt": 2}])
    for each in (record, full):
        raw = {name.encode(): value if isinstance(value, bytes) else value.encode()
               for name, value in each.to_redis().items()}
        assert InvocationRecord.from_redis(raw) == each
    later = replace(record, status=Status.SUCCEEDED, result=b'{"ok":1}', history=[{"attempt": 1}])
    assert later.changes(record) == {"status": "succeeded", "result": b'{"ok":1}', "history": '[{"attempt":1}]'}


def test_a_record_written_without_optional_fields_reads_with_their_defaults() -> None:
    record = InvocationRecord.from_redis({b"function": b"fn", b"qualifier": b"$LATEST", b"status": b"running",
                                          b"received_ms": b"5", b"delivery": b"2"})
    assert (record.trigger, record.attempts, record.history, record.payload, record.updated_ms, record.trace_id) == (
        "async", 0, [], b"", 5, None)


# -- the store's transitions ------------------------------------------------------------------------------


def test_accept_writes_the_record_its_queued_lease_and_its_job_in_one_step(client: redis.Redis,
                                                                           store: AsyncStore) -> None:
    before = now_ms()
    rid = accepted(store, trace_id="Root=1-abc")
    fields = record_of(client, rid)
    assert {name: fields[name] for name in ("function", "status", "attempts", "delivery", "trace_id")} == {
        "function": "fn", "status": "queued", "attempts": "0", "delivery": "1", "trace_id": "Root=1-abc"}
    assert before <= int(fields["received_ms"]) <= now_ms()
    assert lease(client, rid) == int(fields["received_ms"]) + QUEUED_CHECK_S * 1000
    assert queued_jobs(store) == [job_id(rid, 1)] and request_id_of(job_id(rid, 1)) == rid
    assert store.job_waiting(rid, 1) and not store.job_waiting(rid, 2)


def test_start_counts_the_attempt_and_takes_a_running_lease(client: redis.Redis, store: AsyncStore) -> None:
    rid = accepted(store)
    started = store.start(rid, 1)
    assert started is not None and started.record.status is Status.RUNNING
    assert (started.delivery, started.record.attempts, started.record.payload) == (1, 1, b'{"n": 1}')
    assert started.record.started_ms is not None
    assert lease(client, rid) == started.record.started_ms + LEASE_S * 1000
    assert record_of(client, rid)["attempts"] == "1"
    again = store.start(rid, 1)           # the same job run twice (an RQ retry of it): the attempt counts
    assert again is not None and again.record.attempts == 2


def test_a_stale_delivery_neither_starts_nor_finishes(client: redis.Redis, store: AsyncStore) -> None:
    rid = accepted(store)
    started = store.start(rid, 1)
    assert started is not None
    lapse(client, rid)
    assert store.claim_expired(rid) == (2, Status.RUNNING)        # re-delivered meanwhile
    before = record_of(client, rid)
    assert store.start(rid, 1) is None
    assert not store.finish(started, retried(started, now_ms() + 1000), due_ms=now_ms() + 1000)
    assert record_of(client, rid) == before
    assert client.zcard(keys.ASYNC_DELAYED) == 0


def test_finish_with_a_retry_writes_the_changes_and_delays_the_next_attempt(client: redis.Redis,
                                                                            store: AsyncStore) -> None:
    rid = accepted(store)
    started = store.start(rid, 1)
    assert started is not None
    due = now_ms() + 60_000
    assert store.finish(started, retried(started, due), due_ms=due)
    fields = record_of(client, rid)
    assert (fields["status"], fields["next_ms"], fields["attempts"]) == ("retrying", str(due), "1")
    assert client.zscore(keys.ASYNC_DELAYED, rid) == due
    assert lease(client, rid) is None and client.ttl(keys.invocation(rid)) == -1
    assert store.status(rid) == InvocationRecord(**{**vars(retried(started, due)),
                                                    "updated_ms": int(fields["updated_ms"])})


def test_finish_dead_lettered_writes_the_dead_letter_and_its_index(client: redis.Redis, store: AsyncStore) -> None:
    rid = accepted(store)
    started = store.start(rid, 1)
    assert started is not None
    history = [{"attempt": 1, "outcome": "error"}]
    final = replace(started.record, status=Status.DEAD_LETTERED, history=history, error=b'{"errorType":"Boom"}')
    letter = DeadLetter(request_id=rid, function="fn", qualifier="$LATEST", dead_lettered_at="2026-01-01T00:00:00Z",
                        record={"requestPayload": {"n": 1}}, attempts=history)
    assert store.finish(started, final, dead_letter=letter, ttl_s=300)
    assert 0 < client.ttl(keys.invocation(rid)) <= 300
    assert orjson.loads(client.hget(keys.dlq("fn"), rid)) == letter.to_json()  # type: ignore[arg-type]
    assert client.zscore(keys.dlq_index("fn"), rid) is not None
    dead_letters = DeadLetters(client)
    assert dead_letters.get("fn", rid) == letter
    assert dead_letters.page("fn")["items"] == [letter.to_json()]
    assert dead_letters.redrive("fn") == [rid]
    redriven = store.status(rid)
    assert redriven is not None
    assert (redriven.status, redriven.attempts, redriven.delivery, redriven.trigger, redriven.history,
            redriven.payload) == (Status.QUEUED, 0, 1, "redrive", history, b'{"n":1}')
    assert client.zscore(keys.ASYNC_DELAYED, rid) is not None and dead_letters.get("fn", rid) is None


def test_finish_succeeded_keeps_the_result_for_its_ttl_and_writes_destination_invocations(
        client: redis.Redis, store: AsyncStore) -> None:
    rid = accepted(store)
    started = store.start(rid, 1)
    assert started is not None
    final = replace(started.record, status=Status.SUCCEEDED, result=b'{"ok":true}', executed_version="3")
    target = InvocationRecord.new(function="audit", qualifier="$LATEST", payload=b'{"requestContext":{}}',
                                  trigger="destination", received_ms=now_ms(), delivery=0)
    other = str(uuid.uuid4())
    assert store.finish(started, final, new_invocations=[(other, target)], ttl_s=60)
    fields = record_of(client, rid)
    assert (fields["status"], fields["result"], fields["executed_version"]) == ("succeeded", '{"ok":true}', "3")
    assert 0 < client.ttl(keys.invocation(rid)) <= 60 and lease(client, rid) is None
    assert store.status(other) == target                    # delayed, with delivery 0, until promoted
    assert store.promote_due() == 1
    promoted = store.status(other)
    assert promoted is not None and promoted.delivery == 1
    assert queued_jobs(store) == [job_id(rid, 1), job_id(other, 1)] and lease(client, other) is not None
    assert client.zcard(keys.ASYNC_DELAYED) == 0


def test_promote_due_moves_only_due_retries_onto_the_queue(client: redis.Redis, store: AsyncStore) -> None:
    due, later = accepted(store), accepted(store)
    client.delete(store.queue.key)
    for rid, at in ((due, now_ms() - 1), (later, now_ms() + 60_000)):
        started = store.start(rid, 1)
        assert started is not None and store.finish(started, retried(started, at), due_ms=at)
    assert store.promote_due() == 1
    assert queued_jobs(store) == [job_id(due, 2)]
    assert record_of(client, due)["delivery"] == "2" and lease(client, due) is not None
    assert client.zrange(keys.ASYNC_DELAYED, 0, -1) == [later.encode()]
    assert store.promote_due() == 0


def test_claim_expired_redelivers_queued_and_running_invocations_and_pushes_the_lease_on(
        client: redis.Redis, store: AsyncStore) -> None:
    queued, running = accepted(store), accepted(store)
    assert store.start(running, 1) is not None
    assert store.claim_expired(queued) is None                # its lease has not lapsed
    for rid in (queued, running):
        lapse(client, rid)
    before = now_ms()
    assert store.claim_expired(queued) == (2, Status.QUEUED)
    assert store.claim_expired(running) == (2, Status.RUNNING)
    assert store.claim_expired(running) is None               # claimed already: the lease is a period on
    assert (lease(client, running) or 0) >= before + LEASE_S * 1000
    store.redeliver(queued, 2)
    assert job_id(queued, 2) in queued_jobs(store)


def test_claim_expired_drops_the_lease_of_a_final_or_vanished_invocation(client: redis.Redis,
                                                                         store: AsyncStore) -> None:
    done, gone = accepted(store), accepted(store)
    started = store.start(done, 1)
    assert started is not None
    assert store.finish(started, replace(started.record, status=Status.SUCCEEDED), ttl_s=60)
    client.delete(keys.invocation(gone))
    for rid in (done, gone):
        lapse(client, rid)
        assert store.claim_expired(rid) is None
        assert lease(client, rid) is None
    assert store.start(done, 1) is None                      # final: never started again


def test_release_lapses_a_held_lease_at_once_and_adds_none(client: redis.Redis, store: AsyncStore) -> None:
    rid = accepted(store)
    assert store.start(rid, 1) is not None
    store.release(rid)
    assert lease(client, rid) == 0 and store.expired_leases() == [rid]
    client.zrem(keys.ASYNC_LEASES, rid)
    store.release(rid)
    assert lease(client, rid) is None


def test_accept_once_has_a_single_winner_among_concurrent_callers(client: redis.Redis, store: AsyncStore) -> None:
    callers = 8
    barrier = threading.Barrier(callers)
    wins: list[bool] = []

    def fire(index: int) -> None:
        barrier.wait()
        wins.append(store.accept_once(claim_key="lambent:test:claim", claim_ttl_s=60, function="fn",
                                      qualifier="$LATEST", payload=b"{}", trigger="schedule",
                                      request_id=f"fire-{index}", extra={"lambent:test:last": {"by": index}},
                                      counts={"lambent:test:stats": {"fired": 1}}))

    threads = [threading.Thread(target=fire, args=(index,)) for index in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(wins) == [False] * (callers - 1) + [True]
    winner = client.get("lambent:test:claim").decode()  # type: ignore[union-attr]
    assert [key.decode() for key in client.scan_iter(keys.invocation("*"))] == [keys.invocation(winner)]
    assert client.hget("lambent:test:stats", "fired") == b"1"
    assert client.hget("lambent:test:last", "by") == winner.removeprefix("fire-").encode()
    assert queued_jobs(store) == [job_id(winner, 1)]


def test_accept_many_writes_all_or_none(client: redis.Redis, store: AsyncStore) -> None:
    """A transaction that Redis refuses (here: a client not allowed one of the records) writes none of them."""
    user = f"h{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    client.acl_setuser(user, enabled=True, passwords=[f"+{password}"], commands=["+@all"],
                       keys=["lambent:async:*", "rq:*", "lambent:inv:ok-*"], channels=["*"])
    try:
        kwargs = client.connection_pool.connection_kwargs
        limited = redis.Redis(host=kwargs["host"], port=kwargs["port"], db=kwargs["db"], username=user,
                              password=password)
        restricted = AsyncStore(limited, store.config)
        items = [NewInvocation(function="fn", qualifier="$LATEST", payload=b"{}", trigger="sns",
                               request_id=f"ok-{index}") for index in range(3)]
        with pytest.raises(redis.RedisError):
            restricted.accept_many([*items, NewInvocation(function="fn", qualifier="$LATEST", payload=b"{}",
                                                          trigger="sns", request_id="refused")])
        assert list(client.scan_iter("lambent:*")) == [] and queued_jobs(store) == []
        assert restricted.accept_many(items) == [item.request_id for item in items]
        assert sorted(queued_jobs(store)) == sorted(job_id(item.request_id, 1) for item in items)
        limited.close()
    finally:
        client.acl_deluser(user)


def test_depths_counts_what_waits_and_ages_the_oldest_queued_event(client: redis.Redis, store: AsyncStore) -> None:
    empty = store.depths(["fn"])
    assert (empty.queued, empty.delayed, empty.oldest_age_s, empty.dead_letters) == (0, 0, 0.0, {"fn": 0})
    first = accepted(store)
    client.hset(keys.invocation(first), "received_ms", now_ms() - 5_000)
    accepted(store)
    client.zadd(keys.ASYNC_DELAYED, {"later": now_ms() + 60_000})
    client.zadd(keys.dlq_index("fn"), {"dead": 1})
    depths = store.depths(["fn", "other"])
    assert (depths.queued, depths.delayed, depths.dead_letters) == (2, 1, {"fn": 1, "other": 0})
    assert 5.0 <= depths.oldest_age_s < 30.0
