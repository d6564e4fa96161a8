"""`lambent worker`: RQ workers that run async invocations through the shared executor.

The RQ job is `run_job(request_id, delivery)`. It runs in a `SimpleWorker` (no fork, no re-import per
job; see rqworker.Worker) and hands the invocation to the executor, whose event loop lives in a thread of
this process, so warm sandboxes serve job after job. A maintenance thread (maintenance.py) moves due retries
onto the queue, renews the running invocation's lease, and re-runs invocations whose worker was lost.

A Redis outage stops nothing: every step that needs Redis waits for it (redis_retry: one warning per
outage, backoff, resumed by itself). An invocation that ran while Redis was away keeps its outcome in
memory until it is written; only if the worker must stop before Redis is back is the outcome dropped, and
the invocation runs again once its lease lapses (at least once). SIGTERM: see shutdown.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Coroutine, TypeVar

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq.serializers import JSONSerializer

from ..config import Config
from ..events.destination import (CONDITION_EVENT_AGE_EXCEEDED, CONDITION_RETRIES_EXHAUSTED, CONDITION_SUCCESS,
                                  destination_record, iso_ms)
from ..executor.result import InvocationResult, Outcome
from ..functions.catalog import NotFound, Target, split_name
from ..functions.spec import Destination
from ..observability import metrics
from ..redis_retry import UNREACHABLE, Backoff, Stopped, call, outage_for
from ..topics.checks import SnsError
from ..topics.store import Topics
from ..wiring import WithExecutor
from .maintenance import Maintenance
from .policy import Decision, RetryPolicy, decide
from .record import DeadLetter, InvocationRecord, Status
from .rqworker import Worker
from .shutdown import Shutdown
from .store import AsyncStore, Started, now_ms

log = logging.getLogger(__name__)
T = TypeVar("T")

_RUNNER: Runner | None = None


def run_job(request_id: str, delivery: int) -> None:
    """The RQ job function (referenced by name in every job)."""
    if _RUNNER is None:
        raise RuntimeError("run_job runs inside `lambent worker`")
    _RUNNER.run(request_id, delivery)


class Interrupted(Exception):
    """The shutdown stopped the running invocation: its grace was used up, or a second signal came."""


class Runner:
    def __init__(self, config: Config, store: AsyncStore, *, shutdown: Shutdown) -> None:
        self.config = config
        self.shutdown = shutdown
        self.outage = outage_for(config.redis_url)
        self.store = store                  # on the worker's own connection, which RQ's Worker shares
        connection = store.redis
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="executor-loop", daemon=True)
        self._loop_thread.start()
        self.services: WithExecutor = self._call(WithExecutor.start(config))
        # After an outage, connections idle in the pool died with the server: dropped before they are used.
        self.services.health.on_back(lambda: connection.connection_pool.disconnect(inuse_connections=False))
        self._current: str | None = None
        self._task: asyncio.Task[Any] | None = None       # the running invocation, on the executor's loop
        self._interrupted: list[Started] = []             # stopped by the shutdown; released by stop()
        self._maintenance = Maintenance(config, self.store, self.outage, current=lambda: self._current,
                                        lost_worker=self._lost_worker)
        self._maintenance.start()
        self.counts = {"succeeded": 0, "retried": 0, "dead_lettered": 0, "stale": 0, "interrupted": 0,
                       "unwritten": 0}

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def abandon(self) -> None:
        """From the shutdown's thread: stop the running invocation (its sandbox is killed)."""
        self.loop.call_soon_threadsafe(self._cancel_running)

    def _cancel_running(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def stop(self, deadline: float) -> None:
        """Stop maintenance, the sandboxes and the clients, by `deadline` (monotonic) whatever Redis does."""
        self._maintenance.stop(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        for started in self._interrupted:       # after maintenance: this worker does not take them up again
            self._release(started)
        future = asyncio.run_coroutine_threadsafe(self.services.stop(), self.loop)
        try:
            future.result(timeout=max(0.1, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            log.warning("the executor and its Redis clients did not stop in time")
        except UNREACHABLE:
            log.info("stopped without writing the last invocation logs and stats: Redis is not reachable")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        log.info("worker stopped", extra=self.counts)

    # -- one attempt -----------------------------------------------------------------------

    def _abandoned(self) -> bool:
        return self.shutdown.abandon.is_set()

    def run(self, request_id: str, delivery: int) -> None:
        try:
            started = call(lambda: self.store.start(request_id, delivery), outage=self.outage, stop=self._abandoned)
        except Stopped:
            # Taken off the queue, never started: the reaper finds it (AsyncStore.job_waiting) and re-delivers.
            log.warning("not started: Redis is not reachable and the worker is stopping",
                        extra={"request_id": request_id})
            return
        if started is None:
            self.counts["stale"] += 1
            log.info("skipped a stale job", extra={"request_id": request_id, "delivery": delivery})
            return
        self._current = request_id
        try:
            self._attempt(started)
        except Interrupted:
            self._interrupted.append(started)
        finally:
            self._current = None

    def _release(self, started: Started) -> None:
        """After the shutdown stopped it: the invocation stays "running" and its lease lapses now, so that the
        next reaper (any worker's) runs it again at once, as one whose worker was lost, rather than a lease
        period later. Should Redis be down, the lease lapses by itself."""
        self.counts["interrupted"] += 1
        try:
            self.store.release(started.request_id)
        except UNREACHABLE:
            pass                # it lapses by itself
        log.warning("invocation stopped by the shutdown; it runs again, on another worker",
                    extra={"function": started.record.function, "request_id": started.request_id,
                           "attempt": started.record.attempts})

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the executor's loop as the running invocation; Interrupted if abandoned."""
        future = asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise Interrupted() from None

    async def _tracked(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._abandoned():
            coroutine.close()
            raise asyncio.CancelledError()
        self._task = asyncio.current_task()
        try:
            return await coroutine
        finally:
            self._task = None

    async def _resolve_and_invoke(self, started: Started) -> tuple[Target, RetryPolicy, InvocationResult | None]:
        """One hand-off to the executor's loop per job: look the function up, check the event's age, run it.
        The result is None when the event is too old to run."""
        target = await self.services.catalog.resolve(started.record.function, started.record.qualifier)
        policy = RetryPolicy.of(target.version.spec.async_, throttle_delay_s=self.config.async_.throttle_delay_s)
        if now_ms() - started.record.received_ms >= policy.max_event_age_s * 1000:
            return target, policy, None
        result = await self.services.executor.invoke(target, started.record.payload, request_id=started.request_id,
                                                     trigger=started.record.trigger, attempt=started.record.attempts,
                                                     trace_id=started.record.trace_id)
        return target, policy, result

    def _invoke(self, started: Started) -> tuple[Target, RetryPolicy, InvocationResult | None]:
        """What needs Redis before the handler runs (a cold start's code, reserved concurrency) waits for it;
        after the handler, nothing in the executor needs Redis. (No `call` here: an invocation that succeeds
        without Redis says nothing about Redis being back.)"""
        backoff = Backoff()
        while True:
            try:
                return self._on_loop(self._resolve_and_invoke(started))
            except UNREACHABLE as exc:
                self.outage.failed(exc)
                self.outage.pause(backoff.next_s(), self._abandoned)
                if self._abandoned():
                    raise Interrupted() from exc

    def _attempt(self, started: Started) -> None:
        started_ms = now_ms()
        try:
            target, policy, maybe_result = self._invoke(started)
        except NotFound as exc:
            self._unrunnable(started, "ResourceNotFoundException", str(exc))
            return
        if maybe_result is None:
            # Waited past its age (throttled, or a backlog): dead-lettered without running it.
            self._conclude(started, target, Decision(status=Status.DEAD_LETTERED,
                                                     condition=CONDITION_EVENT_AGE_EXCEEDED),
                           attempts=started.record.attempts - 1, result=None, entry=None)
            return
        result = maybe_result
        throttled = result.outcome is Outcome.THROTTLED
        attempts = started.record.attempts - (1 if throttled else 0)
        decision = decide(result.outcome, policy=policy, attempts=attempts,
                          throttles=started.record.throttles + (1 if throttled else 0),
                          received_ms=started.record.received_ms, now_ms=now_ms())
        error = result.error or {}
        entry: dict[str, Any] = {"attempt": started.record.attempts, "outcome": result.outcome.value,
                 "startedAt": iso_ms(started_ms), "endedAt": iso_ms(now_ms()),
                 "durationMs": round(result.duration_ms, 2), "executedVersion": result.executed_version}
        if error:
            entry["errorType"] = error.get("errorType")
            entry["errorMessage"] = error.get("errorMessage")
        self._conclude(started, target, decision, attempts=attempts, result=result, entry=entry,
                       throttled=throttled)

    def _unrunnable(self, started: Started, error_type: str, message: str, *,
                    stop: Callable[[], bool] | None = None) -> None:
        """The function is gone: nothing can run this event, so it is dead-lettered at once."""
        entry = {"attempt": started.record.attempts, "outcome": "not_found", "errorType": error_type,
                 "errorMessage": message, "endedAt": iso_ms(now_ms())}
        self._conclude(started, None, Decision(status=Status.DEAD_LETTERED, condition=CONDITION_RETRIES_EXHAUSTED),
                       attempts=started.record.attempts - 1, result=None, entry=entry, stop=stop)

    def _conclude(self, started: Started, target: Target | None, decision: Decision, *, attempts: int,
                  result: InvocationResult | None, entry: dict[str, Any] | None, throttled: bool = False,
                  due_now: bool = False, stop: Callable[[], bool] | None = None) -> None:
        """Write the outcome, the retry, the DLQ entry and destination invocations in one step. While Redis
        is not reachable the write waits for it, until `stop()` (default: the shutdown's abandon): then the
        outcome is dropped and the invocation runs again when its lease lapses."""
        now = now_ms()
        before = started.record
        history = before.history + ([entry] if entry else [])
        due = decision.due_ms
        if due is not None:
            due = now if due_now else due
        after = dataclasses.replace(
            before, status=decision.status, attempts=attempts, updated_ms=now, history=history,
            throttles=before.throttles + (1 if throttled else 0), next_ms=before.next_ms if due is None else due)
        if result is not None and not throttled:        # the handler's answer, kept until the next one
            after = dataclasses.replace(after, executed_version=result.executed_version,
                                        result=result.payload if result.ok else before.result,
                                        error=before.error if result.ok else result.payload)
        dead_letter = None
        new: list[tuple[str, InvocationRecord]] = []
        spec = target.version.spec if target is not None else None
        outcome = None
        if decision.status.final:
            outcome = self._destination_record(started, decision, attempts, result, entry)
        if decision.status is Status.SUCCEEDED and spec is not None and spec.async_.on_success is not None:
            new += self._destination(spec.async_.on_success, outcome)
        if decision.status is Status.DEAD_LETTERED:
            dead_letter = DeadLetter(request_id=started.request_id, function=before.function,
                                     qualifier=before.qualifier, dead_lettered_at=iso_ms(now), record=outcome or {},
                                     attempts=history)
            if spec is not None and spec.async_.on_failure is not None:
                new += self._destination(spec.async_.on_failure, outcome)
        ttl = self.config.async_.result_ttl_s if decision.status.final else None
        try:
            written = call(lambda: self.store.finish(started, after, due_ms=due, dead_letter=dead_letter,
                                                     new_invocations=new, ttl_s=ttl),
                           outage=self.outage, stop=stop or self._abandoned)
        except Stopped:
            self.counts["unwritten"] += 1
            log.warning("outcome not written: Redis is not reachable and the worker is stopping; the invocation "
                        "runs again once its lease lapses", extra={"request_id": started.request_id,
                                                                   "function": started.record.function})
            return
        if not written:
            self.counts["stale"] += 1
            log.warning("outcome discarded: the invocation was re-delivered meanwhile",
                        extra={"request_id": started.request_id, "function": started.record.function})
            return
        key = {Status.SUCCEEDED: "succeeded", Status.DEAD_LETTERED: "dead_lettered"}.get(decision.status, "retried")
        self.counts[key] += 1
        level = logging.DEBUG if decision.status is Status.SUCCEEDED else logging.INFO
        log.log(level, "async invocation %s", decision.status.value, extra={
            "function": started.record.function, "request_id": started.request_id, "attempt": attempts,
            "condition": decision.condition, "next_in_ms": None if due is None else due - now})

    def _destination_record(self, started: Started, decision: Decision, attempts: int,
                            result: InvocationResult | None, entry: dict[str, Any] | None) -> dict[str, Any]:
        """Lambda's destination record of the outcome (the DLQ keeps it; a destination gets it)."""
        ran = result is not None and result.outcome is not Outcome.THROTTLED
        last = orjson.loads(result.payload) if ran and result is not None else (
            {"errorType": entry.get("errorType"), "errorMessage": entry.get("errorMessage")} if entry else None)
        record = started.record
        arn = f"{self.services.executor.arn(record.function)}:{record.qualifier}"
        return destination_record(
            request_id=started.request_id, function_arn=arn,
            condition=CONDITION_SUCCESS if decision.status is Status.SUCCEEDED else str(decision.condition),
            invoke_count=attempts, request_payload=orjson.loads(record.payload or b"{}"),
            executed_version=result.executed_version if ran and result is not None else None,
            function_error=None if decision.status is Status.SUCCEEDED else "Unhandled",
            response_payload=last, now_ms=now_ms())

    def _destination(self, destination: Destination,
                     outcome: dict[str, Any] | None) -> list[tuple[str, InvocationRecord]]:
        if destination.sns is not None:
            return self._publish(destination.sns, outcome)
        if destination.function is None:
            log.error("topic destinations of async invocations need Kafka; the record stays in the DLQ only",
                      extra={"topic": destination.topic})
            return []
        name, qualifier = split_name(destination.function)
        return [(str(uuid.uuid4()), InvocationRecord.new(function=name, qualifier=qualifier,
                                                          payload=orjson.dumps(outcome), trigger="destination",
                                                          received_ms=now_ms(), delivery=0))]

    def _publish(self, topic: str, outcome: dict[str, Any] | None) -> list[tuple[str, InvocationRecord]]:
        """An `sns` destination: the record is the message, as Lambda publishes to an SNS destination; the
        invocations of the topic's matching subscriptions are written with the outcome, in its one step. A topic
        that does not exist is logged (the DLQ still has the record of a failure)."""
        topics = Topics(self.store.redis, self.config, catalog=self.services.catalog, asyncq=self.store)
        try:
            prepared = call(lambda: topics.prepare(topic, orjson.dumps(outcome).decode()), outage=self.outage,
                            stop=self._abandoned)
        except SnsError as exc:
            log.error("sns destination not published: %s", exc.message, extra={"topic": topic})
            return []
        except Stopped:
            return []           # the outcome cannot be written either; the invocation runs again
        return [(item.request_id, InvocationRecord.new(function=item.function, qualifier=item.qualifier,
                                                       payload=item.payload, trigger=item.trigger,
                                                       received_ms=now_ms(), delivery=0, trace_id=item.trace_id))
                for item in prepared.invocations]

    # -- a lost worker ---------------------------------------------------------------------

    def _lost_worker(self, request_id: str, delivery: int) -> None:
        """The worker running this invocation died: that attempt counts, and it is run again at once."""
        record = self.store.status(request_id)
        if record is None:
            return              # gone since it was claimed (purged by hand): nothing to run again
        started = Started(request_id=request_id, delivery=delivery, record=record)
        log.warning("a worker was lost mid-invocation; running it again",
                    extra={"request_id": request_id, "function": record.function, "attempt": record.attempts})
        entry = {"attempt": record.attempts, "outcome": "worker_lost", "endedAt": iso_ms(now_ms()),
                 "errorType": "Runtime.WorkerLost",
                 "errorMessage": "the worker running this attempt stopped before it finished"}
        stop = self._maintenance.stopping.is_set       # this runs on the maintenance thread
        try:
            target = self._call(self.services.catalog.resolve(record.function, record.qualifier))
        except NotFound as exc:
            self._unrunnable(started, "ResourceNotFoundException", str(exc), stop=stop)
            return
        policy = RetryPolicy.of(target.version.spec.async_, throttle_delay_s=self.config.async_.throttle_delay_s)
        decision = decide(Outcome.CRASH, policy=policy, attempts=record.attempts, throttles=record.throttles,
                          received_ms=record.received_ms, now_ms=now_ms())
        self._conclude(started, target, decision, attempts=record.attempts, result=None, entry=entry, due_now=True,
                       stop=stop)


def run_worker(config: Config, *, burst: bool = False) -> int:
    """One RQ worker in this process, until SIGTERM/SIGINT or, in burst mode, an empty queue. Returns the
    exit code: 0 once stopped in order, 1 when a second signal forced it."""
    global _RUNNER
    shutdown = Shutdown(config.async_.shutdown_grace_s)
    shutdown.install()
    # One quick retry (a pooled connection that died with a restarted Redis); outages are ridden out above it.
    connection = redis.Redis.from_url(config.redis_url, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1))
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):     # else the parent `worker --concurrency N` serves
        metrics.serve(config.metrics.worker_port, config.metrics.host, role="worker")
    _RUNNER = Runner(config, AsyncStore(connection, config), shutdown=shutdown)
    shutdown.on_abandon = _RUNNER.abandon
    worker = Worker([_RUNNER.store.queue], connection=connection, serializer=JSONSerializer,
                    name=f"lambent-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                    outage=_RUNNER.outage, shutdown=shutdown)
    log.info("worker started", extra={"queue": config.async_.queue, "pid": os.getpid(),
                                      "shutdown_grace_s": config.async_.shutdown_grace_s})
    try:
        worker.work(burst=burst, logging_level="WARNING")
    finally:
        _RUNNER.stop(deadline=shutdown.exit_by or time.monotonic() + 10.0)
        _RUNNER = None
    return 1 if shutdown.forced else 0
