"""The RQ side of `lambent worker`: RQ's SimpleWorker, with a work loop that rides out Redis outages and
stops within the shutdown grace.

RQ's own `work()` quits on the first Redis error outside its dequeue ("found an unhandled exception,
quitting..."), logs an error every retry inside it, and on SIGTERM waits for the running job without a bound.
Its public API has no hook for any of that, so the loop is rewritten here from RQ's own steps (`bootstrap`,
`check_for_suspension`, `run_maintenance_tasks`, `dequeue_any`, `execute_job`, `teardown`), written for
rq 3.0. The job itself (`run_job`) rides out an outage on its own (worker.Runner); what RQ writes around
it may be left half done by one, which is harmless: the invocation's record and lease decide, not RQ's job.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from typing import Any

import rq
from redis.client import Pipeline, PubSub, PubSubWorkerThread
from rq import SimpleWorker
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.worker.base import WorkerStatus

from ..redis_retry import UNREACHABLE, Backoff, Outage
from .shutdown import Shutdown

log = logging.getLogger(__name__)

WRITTEN_FOR = "3."          # rq's major version this adapter was written against

# What RQ's handle_job_success writes for a job that keeps no result (result_ttl 0, as every Lambent job), in
# one atomic step instead of its eight round trips (WATCH, the dependents, the stored status, the job's
# executions read twice, MULTI/EXEC): the worker's counters; each of the job's executions out of the started
# registry, its worker's index and Redis; the job's keys. Nothing is written (0) when the job has dependents
# or is no longer `started`: RQ's own path then runs.
# KEYS: job, its dependents, its dependencies, its result, its execution registry, the started registry, worker
# ARGV: job id, seconds worked, execution key prefix, worker-executions key prefix and suffix, this execution's id
FINISH_SUCCESS_LUA = """
if redis.call('SCARD', KEYS[2]) > 0 or redis.call('HGET', KEYS[1], 'status') ~= 'started' then
  return 0
end
redis.call('HINCRBY', KEYS[7], 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', KEYS[7], 'total_working_time', ARGV[2])
local ids = redis.call('ZRANGE', KEYS[5], 0, -1)
table.insert(ids, ARGV[6])
for _, id in ipairs(ids) do
  local composite = ARGV[1] .. ':' .. id
  local key = ARGV[3] .. composite
  local worker = redis.call('HGET', key, 'worker_name')
  if worker and worker ~= '' then
    redis.call('SREM', ARGV[4] .. worker .. ARGV[5], composite)
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[6], composite)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return 1
"""


class Worker(SimpleWorker):
    """RQ's SimpleWorker, with the work loop below, and without the round trips it repeats within every
    job cycle.

    Between two jobs SimpleWorker sends its heartbeat three times (after the job, before and after the
    dequeue), each as three separate commands, and writes its "idle" state twice: ten of its ~27 round
    trips per job. Here a heartbeat of the default TTL goes out at most once a second, as one round trip
    (the TTL is eight minutes, so liveness as `rq info` sees it is unchanged), and a state is written
    only when it changes. Heartbeats with a TTL of their own, or inside RQ's pipelines, are untouched. A
    success is recorded in one Lua script (FINISH_SUCCESS_LUA) instead of RQ's eight round trips, leaving in
    Redis what RQ leaves (tests/test_rqworker_unit.py compares the two).
    """

    HEARTBEAT_EVERY_S = 1.0
    DEQUEUE_TIMEOUT_S = 1       # a blocking dequeue returns this often, to see a stop request
    _heartbeat_sent = float("-inf")      # monotonic time of the last default heartbeat

    def __init__(self, *args: Any, outage: Outage, shutdown: Shutdown, **kwargs: Any) -> None:
        self.outage = outage
        self.shutdown = shutdown
        self._backoff = Backoff()
        super().__init__(*args, **kwargs)
        self._finish_success = self.connection.register_script(FINISH_SUCCESS_LUA)
        probe = Execution(id="", job_id="", connection=self.connection)
        self._execution_key_prefix = probe.key[:len(probe.key) - len(probe.composite_key)]
        self._worker_executions_key = WORKER_EXECUTIONS_KEY_TEMPLATE.split("{0}")
        if not rq.VERSION.startswith(WRITTEN_FOR):
            log.warning("this worker's loop was written for rq %sx; rq %s is installed", WRITTEN_FOR, rq.VERSION)

    # RQ's loops (check_for_suspension) look at this; here it is the shutdown's first signal.
    @property
    def _stop_requested(self) -> bool:
        return self.shutdown.stopping.is_set()

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        if value:
            self.shutdown.stopping.set()

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

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry,
                           execution: Execution) -> None:
        """RQ's bookkeeping of a success in one Lua script (FINISH_SUCCESS_LUA) for a job that keeps no result
        and has no repeat, rate limit or group (every Lambent job); anything else, RQ's own path."""
        simple = (job.get_result_ttl(self.default_result_ttl) == 0 and not job.repeats_left
                  and not job.has_rate_limit and not job.group_id and job.started_at and job.ended_at)
        if not simple or not self._finished(job, execution):
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        self.executions.pop(execution.id, None)
        job._status = JobStatus.FINISHED

    def _finished(self, job: Job, execution: Execution) -> bool:
        assert job.started_at and job.ended_at
        prefix, suffix = self._worker_executions_key
        keys = [job.key, job.dependents_key, job.dependencies_key, Result.get_key(job.id),
                job.execution_registry.key, job.started_job_registry.key, self.key]
        seconds = (job.ended_at - job.started_at).total_seconds()
        done = self._finish_success(keys=keys, args=[job.id, seconds, self._execution_key_prefix, prefix, suffix,
                                                     execution.id])
        return bool(done)

    # -- the loop ----------------------------------------------------------------------------------------

    def work(self, burst: bool = False, logging_level: str | None = "WARNING", **_: Any) -> bool:  # type: ignore[override]
        """Take jobs until the shutdown's first signal (or, in burst mode, an empty queue)."""
        self.bootstrap(logging_level)
        completed = 0
        try:
            while not self.shutdown.stopping.is_set():
                found = self._next_job(burst)
                if found is None:
                    if burst and self._drained:
                        break
                    continue
                self._execute(*found)
                completed += 1
        finally:
            self._teardown()
        log.info("worker loop ended", extra={"jobs": completed})
        return completed > 0

    _drained = False            # burst mode: the last dequeue found the queue empty

    def _next_job(self, burst: bool) -> tuple[Job, Queue] | None:
        """The next job; None when none came within a second, or after waiting out an outage."""
        self._drained = False
        try:
            self.check_for_suspension(burst)
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            self.set_state(WorkerStatus.IDLE)
            self.heartbeat()
            found = self.queue_class.dequeue_any(
                self._ordered_queues, None if burst else self.DEQUEUE_TIMEOUT_S, connection=self.connection,
                job_class=self.job_class, serializer=self.serializer, death_penalty_class=self.death_penalty_class)
        except DequeueTimeout:       # nothing within a second (and Redis answered)
            found = None
        except StopRequested:        # suspended (`rq suspend`) in burst mode
            self._drained = True
            return None
        except UNREACHABLE as exc:
            self._wait_out(exc)
            return None
        except Exception:            # a damaged job, an RQ surprise: logged, and the loop goes on
            log.exception("could not take a job from the queue; trying again in a second")
            self.shutdown.stopping.wait(1.0)
            return None
        self.outage.ok()
        self._backoff.reset()
        self._drained = found is None
        return found

    def _wait_out(self, exc: BaseException) -> None:
        """Redis is not reachable: said once per outage (by the Outage), then a wait with backoff that ends
        early when Redis is seen back, or when the shutdown begins."""
        self.outage.failed(exc)
        self.outage.pause(self._backoff.next_s(), self.shutdown.stopping.is_set)

    def _execute(self, job: Job, queue: Queue) -> None:
        try:
            self.execute_job(job, queue)
        except UNREACHABLE as exc:
            # What RQ writes before or after the job failed: the invocation's record and lease decide what
            # happens to it (a job never started is found by the reaper: AsyncStore.job_waiting).
            self._wait_out(exc)
        except Exception:
            log.exception("RQ's bookkeeping of a job failed; its invocation's lease decides what follows",
                          extra={"job": job.id})

    def _teardown(self) -> None:
        """RQ's teardown without its waits: the pubsub thread is told to stop but not waited for (RQ joins it
        for up to a second, and it may sit in a read), and the worker's death is registered unless Redis is
        down (then its key in Redis expires by itself)."""
        if self.pubsub_thread is not None:
            stop_without_waiting(self.pubsub_thread)
        if not self.outage.down:
            with contextlib.suppress(*UNREACHABLE):
                self.register_death()

    def _pubsub_exception_handler(self, exc: BaseException, pubsub: PubSub,
                                  pubsub_thread: PubSubWorkerThread) -> None:
        """RQ's pubsub thread (for `rq` commands) lost Redis: the process's one warning per outage instead of
        RQ's error line every 2 s; it subscribes again when Redis is back (or after a few seconds)."""
        if not isinstance(exc, UNREACHABLE):
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)   # type: ignore[arg-type]
            return
        self.outage.failed(exc)
        self.outage.pause(2.0)


def stop_without_waiting(thread: PubSubWorkerThread) -> None:
    """Clear the pubsub thread's running flag without waiting for it to end. redis-py 8.2 made stop() join the
    thread, for ever unless given a timeout (and the thread may sit in a read of up to RQ's sleep time);
    earlier versions take no timeout and do not wait."""
    if "timeout" in inspect.signature(thread.stop).parameters:
        thread.stop(timeout=0)
    else:
        thread.stop()
