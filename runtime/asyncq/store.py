"""The async invocation records in Redis, and every state change of one, each a single atomic step.

An invocation's record (`lambent:inv:<id>`) is the truth; an RQ job only carries `(id, delivery)`.
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
from .policy import Status

JOB_FUNCTION = "runtime.asyncq.worker.run_job"


def now_ms() -> int:
    return int(time.time() * 1000)


def text(value: Any) -> str:
    """A Redis reply as str (redis-py types every reply as bytes | str | ...)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def job_id(request_id: str, delivery: int) -> str:
    return f"{request_id}-{delivery}"


# KEYS: record, leases   ARGV: request id, delivery, lease ms, now ms
_START = """
local state = redis.call('HMGET', KEYS[1], 'delivery', 'status')
if state[1] ~= ARGV[2] or state[2] == 'succeeded' or state[2] == 'dead-lettered' then
  return false
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'updated_ms', ARGV[4], 'started_ms', ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
local fields = redis.call('HMGET', KEYS[1], 'function', 'qualifier', 'payload', 'received_ms', 'history',
                          'throttles', 'trigger', 'trace_id')
table.insert(fields, 1, attempts)
return fields
"""

# KEYS: record, leases, delayed, dlq, dlq index   ARGV: request id, delivery, fields (JSON object),
# due ms or '', dlq entry or '', ttl s or '', new invocations (JSON list of [id, fields]), now ms
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
for _, item in ipairs(cjson.decode(ARGV[7])) do
  local key = 'lambent:inv:' .. item[1]
  for field, value in pairs(item[2]) do
    redis.call('HSET', key, field, value)
  end
  redis.call('ZADD', KEYS[3], ARGV[8], item[1])
end
return 1
"""

# KEYS: record, leases   ARGV: request id, now ms, lease ms -> {new delivery, status}, or false when not
# expired / gone / final
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
if status == 'succeeded' or status == 'dead-lettered' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return {redis.call('HINCRBY', KEYS[1], 'delivery', 1), status}
"""


@dataclass(frozen=True, kw_only=True)
class Started:
    request_id: str
    delivery: int
    attempts: int
    function: str
    qualifier: str
    payload: bytes
    received_ms: int
    history: list[dict[str, Any]]
    throttles: int
    trigger: str
    trace_id: str | None = None


def new_record(*, function: str, qualifier: str, payload: bytes, trigger: str, received_ms: int,
               delivery: int = 1, trace_id: str | None = None) -> dict[Any, Any]:
    """`trace_id`: the caller's X-Amzn-Trace-Id, which every attempt carries on (as Lambda's async invocations)."""
    record = {"function": function, "qualifier": qualifier, "payload": payload, "status": Status.QUEUED.value,
              "attempts": 0, "throttles": 0, "delivery": delivery, "received_ms": received_ms,
              "updated_ms": received_ms, "history": "[]", "trigger": trigger}
    if trace_id:
        record["trace_id"] = trace_id
    return record


@dataclass(frozen=True, kw_only=True)
class NewInvocation:
    """One invocation for `AsyncStore.accept_many` (the fields of `accept`)."""
    function: str
    qualifier: str
    payload: bytes
    trigger: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trace_id: str | None = None


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
        pipe.hset(keys.invocation(item.request_id), mapping=new_record(
            function=item.function, qualifier=item.qualifier, payload=item.payload, trigger=item.trigger,
            received_ms=received_ms, trace_id=item.trace_id))
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
                            args=[request_id, delivery, lease_ms, now_ms()])
        if not reply:
            return None
        attempts, function, qualifier, payload, received, history, throttles, trigger, trace = reply
        return Started(request_id=request_id, delivery=delivery, attempts=int(attempts), function=function.decode(),
                       qualifier=qualifier.decode(), payload=payload or b"", received_ms=int(received),
                       history=orjson.loads(history or b"[]"), throttles=int(throttles or 0),
                       trigger=(trigger or b"async").decode(), trace_id=trace.decode() if trace else None)

    def renew(self, request_id: str) -> None:
        """Push the running lease forward (only while it is still held: XX)."""
        expiry = now_ms() + int(self.config.async_.lease_s * 1000)
        self.redis.zadd(keys.ASYNC_LEASES, {request_id: expiry}, xx=True)

    def finish(self, started: Started, *, fields: dict[str, Any], due_ms: int | None = None,
               dlq_entry: bytes | None = None, new_invocations: list[tuple[str, dict[str, Any]]] | None = None,
               ttl_s: int | None = None) -> bool:
        """Record an attempt's outcome in one step; False when the invocation was re-delivered meanwhile."""
        encoded_new = [[rid, {k: (v.decode() if isinstance(v, bytes) else v) for k, v in record.items()}]
                       for rid, record in new_invocations or []]
        done = self._finish(
            keys=[keys.invocation(started.request_id), keys.ASYNC_LEASES, keys.ASYNC_DELAYED,
                  keys.dlq(started.function), keys.dlq_index(started.function)],
            args=[started.request_id, started.delivery, orjson.dumps(fields), "" if due_ms is None else due_ms,
                  dlq_entry or "", "" if ttl_s is None else ttl_s, orjson.dumps(encoded_new), now_ms()])
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

    def claim_expired(self, request_id: str) -> tuple[int, str] | None:
        """Take over an invocation whose lease lapsed: (new delivery, its status), or None."""
        reply = self._claim(keys=[keys.invocation(request_id), keys.ASYNC_LEASES],
                            args=[request_id, now_ms(), int(self.config.async_.lease_s * 1000)])
        if not reply:
            return None
        return int(reply[0]), text(reply[1])

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

    def status(self, request_id: str) -> dict[bytes, bytes] | None:
        record: dict[bytes, bytes] = self.redis.hgetall(keys.invocation(request_id))  # type: ignore[assignment]
        return record or None
