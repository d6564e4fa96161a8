"""`lambent worker`: RQ workers that run async invocations through the shared executor.

The RQ job is `run_job(request_id, delivery)`. It runs in a `SimpleWorker` (no fork, no re-import per
job; `Worker` below trims the Redis round trips it repeats in every job cycle) and hands the invocation
to the executor, whose event loop lives in a thread of this process, so warm sandboxes serve job after
job. A maintenance thread moves due retries onto the queue, renews the running invocation's lease, and
re-runs invocations whose worker was lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Coroutine, TypeVar

import orjson
import redis
from redis.client import Pipeline
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from .. import keys
from ..config import Config
from ..events.destination import (CONDITION_EVENT_AGE_EXCEEDED, CONDITION_RETRIES_EXHAUSTED, CONDITION_SUCCESS,
                                  destination_record, iso_ms)
from ..executor.result import InvocationResult, Outcome
from ..functions.catalog import NotFound, Target, split_name
from ..functions.spec import Destination
from ..observability import metrics
from ..services import Services
from .policy import Decision, RetryPolicy, Status, decide
from .store import AsyncStore, Started, new_record, now_ms

log = logging.getLogger(__name__)
T = TypeVar("T")

_RUNNER: Runner | None = None


class Worker(SimpleWorker):
    """RQ's SimpleWorker without the round trips it repeats within every job cycle.

    Between two jobs SimpleWorker sends its heartbeat three times (after the job, before and after the
    dequeue), each as three separate commands, and writes its "idle" state twice: ten of its ~27 round
    trips per job. Here a heartbeat of the default TTL goes out at most once a second, as one round trip
    (the TTL is eight minutes, so liveness as `rq info` sees it is unchanged), and a state is written
    only when it changes. Heartbeats with a TTL of their own, or inside RQ's pipelines, are untouched.
    """

    HEARTBEAT_EVERY_S = 1.0
    _heartbeat_sent = float("-inf")      # monotonic time of the last default heartbeat

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if timeout is not None or pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        now = time.monotonic()
        if now - self._heartbeat_sent < self.HEARTBEAT_EVERY_S:
            return
        with self.connection.pipeline(transaction=False) as batch:
            super().heartbeat(pipeline=batch)
            batch.execute()
        self._heartbeat_sent = now

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline)


def run_job(request_id: str, delivery: int) -> None:
    """The RQ job function (referenced by name in every job)."""
    if _RUNNER is None:
        raise RuntimeError("run_job runs inside `lambent worker`")
    _RUNNER.run(request_id, delivery)


class Runner:
    def __init__(self, config: Config, connection: redis.Redis) -> None:
        self.config = config
        self.store = AsyncStore(connection, config)
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="executor-loop", daemon=True)
        self._loop_thread.start()
        self.services: Services = self._call(Services.start(config, deploy_functions=False))
        self._current: str | None = None
        self._stopping = threading.Event()
        self._maintenance = threading.Thread(target=self._maintain, name="async-maintenance", daemon=True)
        self._maintenance.start()
        self.counts = {"succeeded": 0, "retried": 0, "dead_lettered": 0, "stale": 0}

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result()

    def stop(self) -> None:
        self._stopping.set()
        self._maintenance.join(timeout=5)
        self._call(self.services.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=5)
        log.info("worker stopped", extra=self.counts)

    # -- one attempt -----------------------------------------------------------------------

    def run(self, request_id: str, delivery: int) -> None:
        started = self.store.start(request_id, delivery)
        if started is None:
            self.counts["stale"] += 1
            log.info("skipped a stale job", extra={"request_id": request_id, "delivery": delivery})
            return
        self._current = request_id
        try:
            self._attempt(started)
        finally:
            self._current = None

    async def _resolve_and_invoke(self, started: Started) -> tuple[Target, RetryPolicy, InvocationResult | None]:
        """One hand-off to the executor's loop per job: look the function up, check the event's age, run it.
        The result is None when the event is too old to run."""
        target = await self.services.catalog.resolve(started.function, started.qualifier)
        policy = RetryPolicy.of(target.version.spec.async_, throttle_delay_s=self.config.async_.throttle_delay_s)
        if now_ms() - started.received_ms >= policy.max_event_age_s * 1000:
            return target, policy, None
        result = await self.services.executor.invoke(target, started.payload, request_id=started.request_id,
                                                     trigger=started.trigger, attempt=started.attempts)
        return target, policy, result

    def _attempt(self, started: Started) -> None:
        started_ms = now_ms()
        try:
            target, policy, maybe_result = self._call(self._resolve_and_invoke(started))
        except NotFound as exc:
            self._unrunnable(started, "ResourceNotFoundException", str(exc))
            return
        if maybe_result is None:
            # Waited past its age (throttled, or a backlog): dead-lettered without running it.
            self._conclude(started, target, Decision(status=Status.DEAD_LETTERED,
                                                     condition=CONDITION_EVENT_AGE_EXCEEDED),
                           attempts=started.attempts - 1, result=None, entry=None)
            return
        result = maybe_result
        throttled = result.outcome is Outcome.THROTTLED
        attempts = started.attempts - (1 if throttled else 0)
        decision = decide(result.outcome, policy=policy, attempts=attempts,
                          throttles=started.throttles + (1 if throttled else 0),
                          received_ms=started.received_ms, now_ms=now_ms())
        error = result.error or {}
        entry: dict[str, Any] = {"attempt": started.attempts, "outcome": result.outcome.value,
                 "startedAt": iso_ms(started_ms), "endedAt": iso_ms(now_ms()),
                 "durationMs": round(result.duration_ms, 2), "executedVersion": result.executed_version}
        if error:
            entry["errorType"] = error.get("errorType")
            entry["errorMessage"] = error.get("errorMessage")
        self._conclude(started, target, decision, attempts=attempts, result=result, entry=entry,
                       throttled=throttled)

    def _unrunnable(self, started: Started, error_type: str, message: str) -> None:
        """The function is gone: nothing can run this event, so it is dead-lettered at once."""
        entry = {"attempt": started.attempts, "outcome": "not_found", "errorType": error_type,
                 "errorMessage": message, "endedAt": iso_ms(now_ms())}
        self._conclude(started, None, Decision(status=Status.DEAD_LETTERED, condition=CONDITION_RETRIES_EXHAUSTED),
                       attempts=started.attempts - 1, result=None, entry=entry)

    def _conclude(self, started: Started, target: Target | None, decision: Decision, *, attempts: int,
                  result: InvocationResult | None, entry: dict[str, Any] | None, throttled: bool = False,
                  due_now: bool = False) -> None:
        """Write the outcome, the retry, the DLQ entry and destination invocations in one step."""
        now = now_ms()
        history = started.history + ([entry] if entry else [])
        fields: dict[str, Any] = {"status": decision.status.value, "attempts": attempts, "updated_ms": now,
                                  "throttles": started.throttles + (1 if throttled else 0),
                                  "history": orjson.dumps(history).decode()}
        if result is not None and not throttled:
            fields["executed_version"] = result.executed_version
            fields["result" if result.ok else "error"] = result.payload.decode()
        due = decision.due_ms
        if due is not None:
            due = now if due_now else due
            fields["next_ms"] = due
        dlq_entry = None
        new: list[tuple[str, dict[str, Any]]] = []
        spec = target.version.spec if target is not None else None
        record = None
        if decision.status is Status.SUCCEEDED or decision.status is Status.DEAD_LETTERED:
            record = self._record(started, decision, attempts, result, entry)
        if decision.status is Status.SUCCEEDED and spec is not None and spec.async_.on_success is not None:
            new += self._destination(spec.async_.on_success, record)
        if decision.status is Status.DEAD_LETTERED:
            dlq_entry = orjson.dumps({"requestId": started.request_id, "function": started.function,
                                      "qualifier": started.qualifier, "deadLetteredAt": iso_ms(now),
                                      "record": record, "attempts": history})
            if spec is not None and spec.async_.on_failure is not None:
                new += self._destination(spec.async_.on_failure, record)
        ttl = self.config.async_.result_ttl_s if decision.status.final else None
        if not self.store.finish(started, fields=fields, due_ms=due, dlq_entry=dlq_entry, new_invocations=new,
                                 ttl_s=ttl):
            self.counts["stale"] += 1
            log.warning("outcome discarded: the invocation was re-delivered meanwhile",
                        extra={"request_id": started.request_id, "function": started.function})
            return
        key = {Status.SUCCEEDED: "succeeded", Status.DEAD_LETTERED: "dead_lettered"}.get(decision.status, "retried")
        self.counts[key] += 1
        level = logging.DEBUG if decision.status is Status.SUCCEEDED else logging.INFO
        log.log(level, "async invocation %s", decision.status.value, extra={
            "function": started.function, "request_id": started.request_id, "attempt": attempts,
            "condition": decision.condition, "next_in_ms": None if due is None else due - now})

    def _record(self, started: Started, decision: Decision, attempts: int, result: InvocationResult | None,
                entry: dict[str, Any] | None) -> dict[str, Any]:
        ran = result is not None and result.outcome is not Outcome.THROTTLED
        last = orjson.loads(result.payload) if ran and result is not None else (
            {"errorType": entry.get("errorType"), "errorMessage": entry.get("errorMessage")} if entry else None)
        qualifier = started.qualifier
        return destination_record(
            request_id=started.request_id, function_arn=f"{self.services.executor.arn(started.function)}:{qualifier}",
            condition=CONDITION_SUCCESS if decision.status is Status.SUCCEEDED else str(decision.condition),
            invoke_count=attempts, request_payload=orjson.loads(started.payload or b"{}"),
            executed_version=result.executed_version if ran and result is not None else None,
            function_error=None if decision.status is Status.SUCCEEDED else "Unhandled",
            response_payload=last, now_ms=now_ms())

    def _destination(self, destination: Destination, record: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
        if destination.function is None:
            log.error("topic destinations of async invocations need Kafka; the record stays in the DLQ only",
                      extra={"topic": destination.topic})
            return []
        name, qualifier = split_name(destination.function)
        request_id = str(uuid.uuid4())
        return [(request_id, new_record(function=name, qualifier=qualifier, payload=orjson.dumps(record),
                                        trigger="destination", received_ms=now_ms(), delivery=0))]

    # -- maintenance: due retries, leases, lost workers ------------------------------------

    def _maintain(self) -> None:
        settings = self.config.async_
        next_renew = next_reap = 0.0
        while not self._stopping.wait(settings.poll_s):
            try:
                self.store.promote_due()
                now = time.monotonic()
                current = self._current
                if current is not None and now >= next_renew:
                    self.store.renew(current)
                    next_renew = now + settings.lease_s / 3
                if now >= next_reap:
                    self._reap()
                    next_reap = now + min(1.0, settings.lease_s / 4)
            except redis.RedisError:
                log.warning("async maintenance lost Redis; retrying", exc_info=True)
                self._stopping.wait(1.0)
            except Exception:    # one bad record must not stop maintenance for every other one
                log.exception("async maintenance failed; continuing")

    def _reap(self) -> None:
        for request_id in self.store.expired_leases():
            state = self.store.status(request_id)
            if state is None:
                self.store.redis.zrem(keys.ASYNC_LEASES, request_id)
                continue
            status = state.get(b"status", b"").decode()
            delivery = int(state.get(b"delivery", b"0"))
            if status in ("queued", "retrying") and self.store.job_waiting(request_id, delivery):
                self.store.extend_lease(request_id)     # a backlog, not a loss
                continue
            claimed = self.store.claim_expired(request_id)
            if claimed is None:
                continue
            new_delivery, status = claimed
            if status == "running":
                self._lost_worker(request_id, new_delivery)
            else:
                log.warning("re-delivering a queued invocation whose job was lost",
                            extra={"request_id": request_id})
                self.store.redeliver(request_id, new_delivery)

    def _lost_worker(self, request_id: str, delivery: int) -> None:
        """The worker running this invocation died: that attempt counts, and it is run again at once."""
        state = self.store.status(request_id) or {}
        started = Started(
            request_id=request_id, delivery=delivery, attempts=int(state.get(b"attempts", b"1")),
            function=state[b"function"].decode(), qualifier=state[b"qualifier"].decode(),
            payload=state.get(b"payload", b""), received_ms=int(state[b"received_ms"]),
            history=orjson.loads(state.get(b"history", b"[]")), throttles=int(state.get(b"throttles", b"0")),
            trigger=state.get(b"trigger", b"async").decode())
        log.warning("a worker was lost mid-invocation; running it again",
                    extra={"request_id": request_id, "function": started.function, "attempt": started.attempts})
        entry = {"attempt": started.attempts, "outcome": "worker_lost", "endedAt": iso_ms(now_ms()),
                 "errorType": "Runtime.WorkerLost",
                 "errorMessage": "the worker running this attempt stopped before it finished"}
        try:
            target = self._call(self.services.catalog.resolve(started.function, started.qualifier))
        except NotFound as exc:
            self._unrunnable(started, "ResourceNotFoundException", str(exc))
            return
        policy = RetryPolicy.of(target.version.spec.async_, throttle_delay_s=self.config.async_.throttle_delay_s)
        decision = decide(Outcome.CRASH, policy=policy, attempts=started.attempts, throttles=started.throttles,
                          received_ms=started.received_ms, now_ms=now_ms())
        self._conclude(started, target, decision, attempts=started.attempts, result=None, entry=entry, due_now=True)


def run_worker(config: Config, *, burst: bool = False) -> None:
    """One RQ worker in this process, until SIGTERM/SIGINT (warm shutdown) or, in burst mode, an empty queue."""
    global _RUNNER
    connection = redis.Redis.from_url(config.redis_url)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):     # else the parent `worker --concurrency N` serves
        metrics.serve(config.metrics.worker_port, config.metrics.host, role="worker")
    _RUNNER = Runner(config, connection)
    worker = Worker([_RUNNER.store.queue], connection=connection, serializer=JSONSerializer,
                    name=f"lambent-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    log.info("worker started", extra={"queue": config.async_.queue, "pid": os.getpid()})
    try:
        worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
    finally:
        _RUNNER.stop()
        _RUNNER = None
