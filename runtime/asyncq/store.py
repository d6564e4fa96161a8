"""The async invocation records in Redis, and every state change of one, each a single atomic step.

An invocation's record (`lambent:inv:<id>`, encoded by record.InvocationRecord) is the truth; an RQ job only
carries `(id, delivery)`.
`delivery` counts how many times the invocation was handed to RQ: a job whose delivery is not the
record's is stale (its invocation was re-delivered after a lost worker) and does nothing.

  accept   record + RQ job + a "queued" lease, in one MULTI           (the 202 is sent after it)
  start    delivery matches -> running, attempts + 1, running lease   (Lua)
  finish   delivery matches -> outcome, retry due, DLQ entry, new destination invocations (Lua)
  promote  a due retry -> delivery + 1, RQ job                         (WATCH on the record)
  reap     an expired lease -> re-deliver (queued) or re-run (running), delivery + 1
  release  a running invocation the shutdown stopped -> its lease lapses now, and a reaper re-runs it

A claim of an expired lease pushes it a lease period on instead of dropping it, so that an invocation
whose reaper lost Redis (or died) before it re-ran it is claimed again later, never left without a lease.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import orjson
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .. import keys
from ..config import Config
from .record import FINAL, DeadLetter, InvocationRecord, Status, as_text

JOB_FUNCTION = "runtime.asyncq.worker.run_job"


def now_ms() -> int:
    return int(time.time() * 1000)


def text(value: Any) -> str:
    """A Redis reply as str (redis-py types every reply as bytes | str | ...)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def job_id(request_id: str, delivery: int) -> str:
    """The RQ job id of one delivery of an invocation."""
    return f"{request_id}-{delivery}"


def request_id_of(job: str) -> str:
    """The invocation an RQ job id (`job_id`) delivers."""
    return job.rsplit("-", 1)[0]


# The scripts name the fields a transition checks or counts (delivery, status, attempts) and the times a start
# stamps; every other field comes, encoded, from InvocationRecord. Status strings come as ARGV from Status.

# KEYS: record, leases   ARGV: request id, delivery, lease ms, now ms, running, final statuses...
# -> the record (HGETALL) once started, or false when this delivery is stale or the invocation final
_START = """
local state = redis.call('HMGET', KEYS[1], 'delivery', 'status')
if state[1] ~= ARGV[2] then
  return false
end
for i = 6, #ARGV do
  if state[2] == ARGV[i] then
    return false
  end
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'updated_ms', ARGV[4], 'started_ms', ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: record, leases, delayed, dlq, dlq index, then each new invocation's record
# ARGV: request id, delivery, fields (JSON object), due ms or '', dlq entry or '', ttl s or '',
#       new invocations (JSON list of [id, fields], the n-th one's record is KEYS[5 + n]), now ms
_FINISH = """
if redis.call('HGET', KEYS[1], 'delivery') ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
for field, value in pairs(cjson.decode(ARGV[3])) do
  redis.call('HSET', KEYS[1], field, value)
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[1])
end
if ARGV[6] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
for n, item in ipairs(cjson.decode(ARGV[7])) do
  for field, value in pairs(item[2]) do
    redis.call('HSET', KEYS[5 + n], field, value)
  end
  redis.call('ZADD', KEYS[3], ARGV[8], item[1])
end
return 1
"""

# KEYS: record, leases   ARGV: request id, now ms, lease ms, final statuses...
# -> {new delivery, status}, or false when not expired / gone / final
_CLAIM_EXPIRED = """
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[2]) then
  return false
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
local status = redis.call('HGET', KEYS[1], 'status')
for i = 4, #ARGV do
  if status == ARGV[i] then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return false
  end
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return {redis.call('HINCRBY', KEYS[1], 'delivery', 1), status}
"""

_FINAL = [status.value for status in FINAL]


@dataclass(frozen=True, kw_only=True)
class Started:
    """An invocation one job has started: its record as the start left it (running, this attempt counted)."""
    request_id: str
    delivery: int                       # the job's delivery (the record's, when the job started it)
    record: InvocationRecord


@dataclass(frozen=True, kw_only=True)
class NewInvocation:
    """One invocation for `AsyncStore.accept_many` (the fields of `accept`)."""
    function: str
    qualifier: str
    payload: bytes
    trigger: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trace_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Depths:
    """The cluster's async numbers, for the metrics collector (observability.metrics.AsyncNumbers)."""
    queued: int                          # jobs waiting on the RQ queue
    delayed: int                         # invocations waiting for a retry or a throttle
    oldest_age_s: float                  # age of the event at the queue's head (0: none)
    dead_letters: dict[str, int]         # function name -> DLQ depth


class AsyncStore:
    """Blocking (redis-py) operations; the gateway calls them in a thread, the worker directly."""

    def __init__(self, connection: redis.Redis, config: Config) -> None:
        self.redis = connection
        self.config = config
        self.queue = Queue(config.async_.queue, connection=connection, serializer=JSONSerializer)
        self._start = connection.register_script(_START)
        self._finish = connection.register_script(_FINISH)
        self._claim = connection.register_script(_CLAIM_EXPIRED)

    def _enqueue(self, pipe: Any, request_id: str, delivery: int) -> None:
        self.queue.enqueue_call(JOB_FUNCTION, args=[request_id, delivery], job_id=job_id(request_id, delivery),
                                timeout=-1, result_ttl=0, failure_ttl=86400, pipeline=pipe)

    def _stage(self, pipe: Any, item: NewInvocation, received_ms: int) -> None:
        """Queue, in `pipe`'s transaction, the record of a new invocation, its lease and its RQ job."""
        record = InvocationRecord.new(function=item.function, qualifier=item.qualifier, payload=item.payload,
                                      trigger=item.trigger, received_ms=received_ms, trace_id=item.trace_id)
        pipe.hset(keys.invocation(item.request_id), mapping=record.to_redis())
        pipe.zadd(keys.ASYNC_LEASES, {item.request_id: received_ms + int(self.config.async_.queued_check_s * 1000)})
        self._enqueue(pipe, item.request_id, 1)

    def accept(self, *, function: str, qualifier: str, payload: bytes, trigger: str,
               request_id: str | None = None, trace_id: str | None = None) -> str:
        """Write the record and its RQ job in one transaction; when this returns, the event is in Redis."""
        item = NewInvocation(function=function, qualifier=qualifier, payload=payload, trigger=trigger,
                             trace_id=trace_id, **({"request_id": request_id} if request_id else {}))
        return self.accept_many([item])[0]

    def accept_many(self, items: Sequence[NewInvocation]) -> list[str]:
        """As `accept` for several invocations, in one transaction: when this returns, all of them are in Redis;
        when it raises, none is (a topic's publish fans out so, never half-delivered). Returns their ids."""
        received = now_ms()
        if items:
            with self.redis.pipeline() as pipe:
                pipe.multi()
                for item in items:
                    self._stage(pipe, item, received)
                pipe.execute()
        return [item.request_id for item in items]

    def accept_once(self, *, claim_key: str, claim_ttl_s: int, function: str, qualifier: str, payload: bytes,
                    trigger: str, request_id: str, extra: dict[str, dict[Any, Any]] | None = None,
                    counts: dict[str, dict[str, int]] | None = None) -> bool:
        """As `accept`, only if nobody took `claim_key` first: the claim, the record, the job, the `extra` hashes
        and the `counts` (key -> field -> increment) are written in one transaction (WATCH on the claim), so
        exactly one caller wins, and a reader never sees the invocation without its counts."""
        received = now_ms()
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(claim_key)
                if pipe.exists(claim_key):
                    return False
                pipe.multi()
                pipe.set(claim_key, request_id, ex=claim_ttl_s)
                self._stage(pipe, NewInvocation(function=function, qualifier=qualifier, payload=payload,
                                                trigger=trigger, request_id=request_id), received)
                for key, mapping in (extra or {}).items():
                    pipe.hset(key, mapping=mapping)
                for key, increments in (counts or {}).items():
                    for name, amount in increments.items():
                        pipe.hincrby(key, name, amount)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def start(self, request_id: str, delivery: int) -> Started | None:
        """Mark the invocation running under a lease; None when this job is stale or already final."""
        lease_ms = int(self.config.async_.lease_s * 1000)
        reply = self._start(keys=[keys.invocation(request_id), keys.ASYNC_LEASES],
                            args=[request_id, delivery, lease_ms, now_ms(), Status.RUNNING.value, *_FINAL])
        if not reply:
            return None
        raw = dict(zip(reply[::2], reply[1::2]))
        return Started(request_id=request_id, delivery=delivery, record=InvocationRecord.from_redis(raw))

    def renew(self, request_id: str) -> None:
        """Push the running lease forward (only while it is still held: XX)."""
        expiry = now_ms() + int(self.config.async_.lease_s * 1000)
        self.redis.zadd(keys.ASYNC_LEASES, {request_id: expiry}, xx=True)

    def finish(self, started: Started, record: InvocationRecord, *, due_ms: int | None = None,
               dead_letter: DeadLetter | None = None,
               new_invocations: Sequence[tuple[str, InvocationRecord]] = (), ttl_s: int | None = None) -> bool:
        """Record an attempt's outcome in one step: the fields in which `record` differs from the started one,
        the retry due, the dead letter, the new (destination) invocations, delayed until promoted. False when
        the invocation was re-delivered meanwhile (nothing is written)."""
        function = started.record.function
        done = self._finish(
            keys=[keys.invocation(started.request_id), keys.ASYNC_LEASES, keys.ASYNC_DELAYED,
                  keys.dlq(function), keys.dlq_index(function),
                  *(keys.invocation(rid) for rid, _ in new_invocations)],
            args=[started.request_id, started.delivery, orjson.dumps(as_text(record.changes(started.record))),
                  "" if due_ms is None else due_ms, dead_letter.to_redis() if dead_letter else "",
                  "" if ttl_s is None else ttl_s,
                  orjson.dumps([[rid, as_text(new.to_redis())] for rid, new in new_invocations]), now_ms()])
        return bool(done)

    def promote_due(self, limit: int = 100) -> int:
        """Move due retries and new destination invocations onto the RQ queue; safe on every worker."""
        due = self.redis.zrangebyscore(keys.ASYNC_DELAYED, "-inf", now_ms(), start=0, num=limit)
        moved = 0
        for raw in due:
            request_id = text(raw)
            record = keys.invocation(request_id)
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(record, keys.ASYNC_DELAYED)
                    if pipe.zscore(keys.ASYNC_DELAYED, request_id) is None:
                        continue                      # another worker promoted it first
                    delivery = int(pipe.hget(record, "delivery") or 0) + 1
                    pipe.multi()
                    pipe.zrem(keys.ASYNC_DELAYED, request_id)
                    pipe.hset(record, "delivery", delivery)
                    pipe.zadd(keys.ASYNC_LEASES,
                              {request_id: now_ms() + int(self.config.async_.queued_check_s * 1000)})
                    self._enqueue(pipe, request_id, delivery)
                    pipe.execute()
                    moved += 1
                except redis.WatchError:
                    continue
        return moved

    def expired_leases(self, limit: int = 100) -> list[str]:
        return [text(raw) for raw in
                self.redis.zrangebyscore(keys.ASYNC_LEASES, "-inf", now_ms(), start=0, num=limit)]

    def drop_lease(self, request_id: str) -> None:
        """The lease of an invocation whose record is gone."""
        self.redis.zrem(keys.ASYNC_LEASES, request_id)

    def claim_expired(self, request_id: str) -> tuple[int, Status] | None:
        """Take over an invocation whose lease lapsed: (new delivery, its status), or None."""
        reply = self._claim(keys=[keys.invocation(request_id), keys.ASYNC_LEASES],
                            args=[request_id, now_ms(), int(self.config.async_.lease_s * 1000), *_FINAL])
        if not reply:
            return None
        return int(reply[0]), Status(text(reply[1]))

    def job_waiting(self, request_id: str, delivery: int) -> bool:
        """Is this delivery's RQ job still queued (waiting its turn, not lost)? A job that a worker took off
        the queue and then lost Redis before it started it is still "queued" for RQ, but sits in RQ's
        intermediate list, where nobody will take it: that one is lost."""
        jid = job_id(request_id, delivery)
        try:
            job = Job.fetch(jid, connection=self.redis, serializer=JSONSerializer)
        except Exception:   # rq raises NoSuchJobError, or a deserialization error for a damaged job
            return False
        if job.get_status(refresh=False) not in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            return False
        return self.redis.lpos(self.queue.intermediate_queue_key, jid) is None

    def release(self, request_id: str) -> None:
        """The shutdown stopped this running invocation: its lease lapses now (only while it is held: XX),
        so that a reaper runs it again at once instead of a lease period later."""
        self.redis.zadd(keys.ASYNC_LEASES, {request_id: 0}, xx=True)

    def extend_lease(self, request_id: str) -> None:
        """A queued invocation whose job is still waiting its turn: check it again later."""
        expiry = now_ms() + int(self.config.async_.queued_check_s * 1000)
        self.redis.zadd(keys.ASYNC_LEASES, {request_id: expiry}, xx=True)

    def redeliver(self, request_id: str, delivery: int) -> None:
        """After a claim of a queued invocation whose job was lost: hand it to RQ again."""
        with self.redis.pipeline() as pipe:
            pipe.multi()
            self._enqueue(pipe, request_id, delivery)
            pipe.zadd(keys.ASYNC_LEASES, {request_id: now_ms() + int(self.config.async_.queued_check_s * 1000)})
            pipe.execute()

    def status(self, request_id: str) -> InvocationRecord | None:
        """The invocation's record; None when there is none (never accepted, or finished longer ago than
        `async.result_ttl_s`)."""
        raw: dict[bytes, bytes] = self.redis.hgetall(keys.invocation(request_id))  # type: ignore[assignment]
        return InvocationRecord.from_redis(raw) if raw else None

    def depths(self, functions: Sequence[str]) -> Depths:
        """What waits, cluster-wide: the RQ queue, the delayed set, the age of the queue's oldest event, each
        function's dead letters (a scrape of the metrics asks)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.queue.key)
            pipe.zcard(keys.ASYNC_DELAYED)
            pipe.lindex(self.queue.key, 0)
            for name in functions:
                pipe.zcard(keys.dlq_index(name))
            queued, delayed, first, *dead = pipe.execute()
        age = 0.0
        if first is not None:
            received = self.redis.hget(keys.invocation(request_id_of(text(first))), "received_ms")
            if received is not None:
                age = max(0.0, time.time() - int(text(received)) / 1000)
        return Depths(queued=int(queued), delayed=int(delayed), oldest_age_s=age,
                      dead_letters={name: int(count) for name, count in zip(functions, dead)})
