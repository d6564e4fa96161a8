"""`lambent scheduler`: APScheduler fires every `schedule` event as an async invocation, exactly once.

APScheduler (3.x, in-memory job store rebuilt from the catalog) keeps time; each occurrence is handed
to `fire`, which enqueues the invocation and claims the occurrence in one Redis transaction keyed by
schedule and fire time, so any number of replicas fire it once. The invocation id is derived from the
same key. A replica that starts after a gap (every scheduler was down) resumes from the last fire
recorded in Redis: the latest missed occurrence is fired late when within `scheduler.misfire_grace_s`,
and the others are counted as missed (missed fires coalesce into one).

A Redis outage is such a gap: while Redis cannot be reached, each schedule owes its latest occurrence, and
fires it as soon as Redis answers (late, within the grace; the older ones of the outage are counted missed).
The claim still decides, so no occurrence fires twice, whichever replicas owed it. SIGTERM stops it within
`scheduler.shutdown_grace_s`; a fire stuck on a Redis that does not answer is abandoned then (the claim was
taken or it was not: another replica, or the next start, fires it late).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import redis
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import keys
from ..asyncq.store import AsyncStore
from ..config import Config
from ..functions.spec import ScheduleEvent
from ..observability import metrics
from ..observability.outage import UNREACHABLE
from ..wiring import Base
from ..shutdown import GracefulStop
from .expressions import Schedule, parse

log = logging.getLogger(__name__)
# Closing what is left at shutdown: past its time, or Redis gone (nothing is waited for then).
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, *UNREACHABLE)
UTC = timezone.utc
CLAIM_TTL_S = 7 * 86400
_NAMESPACE = uuid.UUID("6b8f3f5e-3f44-4a52-9f0e-5c1d9a0e2b71")   # request ids of schedule fires
MAX_CATCH_UP = 10_000                                               # occurrences counted after a long gap


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    function: str
    index: int
    event: ScheduleEvent

    @property
    def job_id(self) -> str:
        return f"{self.function}/{self.index}"

    @property
    def rule_name(self) -> str:
        return f"{self.function}-schedule-{self.index}"


def request_id_for(function: str, index: int, fire_at: datetime) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{function}/{index}/{int(fire_at.timestamp())}"))


def scheduled_event(*, spec: ScheduleSpec, fire_at: datetime, request_id: str, region: str,
                    account: str) -> Any:
    """EventBridge's Scheduled Event for this occurrence, or the schedule's constant `input`."""
    if spec.event.input is not None:
        return spec.event.input
    return {"version": "0", "id": request_id, "detail-type": "Scheduled Event", "source": "aws.events",
            "account": account, "time": fire_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": region,
            "resources": [f"arn:aws:events:{region}:{account}:rule/{spec.rule_name}"], "detail": {}}


class ExpressionTrigger(BaseTrigger):
    """An APScheduler trigger over our own expressions (which know AWS's L, W and # and DST rules)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return self.schedule.next_after(previous_fire_time or now)


class FireExecutor(BaseExecutor):
    """Hands APScheduler's run times to `fire` (which needs the scheduled time, not just a call), on a few
    daemon threads: a fire stuck on a Redis that does not answer must not hold the process's exit."""

    THREADS = 4

    def __init__(self, runner: SchedulerRunner) -> None:
        super().__init__()
        self._runner = runner
        self._queue: queue.SimpleQueue[tuple[Job, list[datetime]] | None] = queue.SimpleQueue()
        self._busy = 0                          # fires submitted and not finished
        self._idle = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"fire-{n}", daemon=True)
                         for n in range(self.THREADS)]

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        for thread in self._threads:
            thread.start()

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        with self._idle:
            self._busy += 1
        self._queue.put((job, run_times))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job, run_times = item
            try:
                self._runner.fire(job.id, run_times)
            except Exception:   # one failed fire must not stop the schedule; the log says which
                log.exception("a schedule fire failed", extra={"schedule": job.id})
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
            self._run_job_success(job.id, [])

    def drain(self, until: float) -> int:
        """Wait until the fires submitted so far are done, or `until` (time.monotonic()); how many are not."""
        with self._idle:
            while self._busy and (left := until - time.monotonic()) > 0:
                self._idle.wait(left)
            return self._busy

    def shutdown(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._queue.put(None)               # after the fires queued so far


class SchedulerRunner:
    def __init__(self, config: Config, stop: GracefulStop) -> None:
        self._config = config
        self._stop = stop
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._specs: dict[str, ScheduleSpec] = {}
        self._locks: dict[str, threading.Lock] = {}     # per schedule: its owed and its next fire never overlap
        self._owed: dict[str, datetime] = {}            # schedule -> the latest occurrence Redis was down for
        self._lock = threading.Lock()                 # the owed occurrences and the count of fires
        self._fired = 0
        self._services: Base | None = None
        # Fires run on threads: a Redis that is down must cost a fire a moment, not redis-py's ten retries.
        self._redis = redis.Redis.from_url(config.redis_url, socket_connect_timeout=1, socket_timeout=2,
                                           retry=Retry(NoBackoff(), 1))     # once more: a connection left from before
        self._store = AsyncStore(self._redis, config)
        self._executor = FireExecutor(self)
        grace = config.scheduler.misfire_grace_s
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()}, executors={"default": self._executor},
            # Set explicitly: late fires within the grace run once (coalesced); `fire` counts the rest.
            job_defaults={"coalesce": True, "misfire_grace_time": None if grace == 0 else int(grace) or 1,
                          "max_instances": 1},
            timezone=UTC)

    # -- firing ------------------------------------------------------------------------------

    def fire(self, job_id: str, run_times: list[datetime]) -> None:
        """Fire the latest of `run_times`, after the occurrence this schedule still owes from an outage. While
        Redis cannot be reached the latest occurrence is owed instead (see the module's docstring)."""
        spec, lock = self._specs.get(job_id), self._locks.get(job_id)
        if spec is None or lock is None or self._services is None:
            return
        health = self._services.health
        with lock:
            with self._lock:
                owed = self._owed.pop(job_id, None)
            due = sorted({run_times[-1], *([owed] if owed is not None else [])})
            for fire_at in due:
                if health.down:                  # its probe says when Redis is back; nothing to ask meanwhile
                    self._owe(job_id, due[-1])
                    return
                try:
                    self._fire_one(spec, fire_at)
                except UNREACHABLE as exc:
                    health.failed(exc)
                    self._owe(job_id, due[-1])
                    return

    def _owe(self, job_id: str, fire_at: datetime) -> None:
        with self._lock:
            self._owed[job_id] = max(fire_at, self._owed.get(job_id, fire_at))
        log.debug("schedule fire owed until Redis answers", extra={"schedule": job_id, "scheduled": fire_at.isoformat()})

    def _fire_owed(self) -> None:
        """Redis answers again: fire what each schedule owes (late, within the grace; else counted missed)."""
        with self._lock:
            owed, self._owed = self._owed, {}
        for job_id, fire_at in sorted(owed.items()):
            self.fire(job_id, [fire_at])

    def _fire_one(self, spec: ScheduleSpec, fire_at: datetime) -> None:
        job_id = spec.job_id
        now = datetime.now(UTC)
        late_s = (now - fire_at).total_seconds()
        missed = self._missed_before(spec, fire_at)
        stats = keys.schedule_stats(spec.function, spec.index)
        store = self._store
        if late_s > self._config.scheduler.misfire_grace_s:
            store.redis.hincrby(stats, "missed", missed + 1)
            metrics.SCHEDULE_MISSED.labels(spec.function, str(spec.index)).inc(missed + 1)
            self._write_last(spec, fire_at, request_id=None, late_s=late_s, outcome="missed")
            log.warning("schedule fire missed: past the grace time", extra={
                "schedule": job_id, "scheduled": fire_at.isoformat(), "late_s": round(late_s, 3)})
            return
        request_id = request_id_for(spec.function, spec.index, fire_at)
        event = scheduled_event(spec=spec, fire_at=fire_at, request_id=request_id, region=self._config.region,
                                account=self._config.account_id)
        last = {"scheduled_ms": int(fire_at.timestamp() * 1000), "request_id": request_id,
                "fired_ms": int(now.timestamp() * 1000), "late_ms": int(late_s * 1000), "by": self._owner,
                "outcome": "fired"}
        counts = {"fired": 1, **({"late": 1} if late_s > 1.0 else {}), **({"missed": missed} if missed else {})}
        fired = store.accept_once(
            claim_key=keys.schedule_fired(spec.function, spec.index, int(fire_at.timestamp())), claim_ttl_s=CLAIM_TTL_S,
            function=spec.function, qualifier=spec.event.qualifier, payload=orjson.dumps(event), trigger="schedule",
            request_id=request_id, extra={keys.schedule_last(spec.function, spec.index): last},
            counts={stats: counts})
        if not fired:
            return                                   # another replica fired this occurrence
        with self._lock:
            self._fired += 1
        metrics.SCHEDULE_FIRES.labels(spec.function, str(spec.index)).inc()
        if late_s > 1.0:
            metrics.SCHEDULE_LATE.labels(spec.function, str(spec.index)).inc()
        if missed:
            metrics.SCHEDULE_MISSED.labels(spec.function, str(spec.index)).inc(missed)
        log.info("schedule fired", extra={"schedule": job_id, "function": spec.function, "request_id": request_id,
                                          "scheduled": fire_at.isoformat(), "late_ms": last["late_ms"],
                                          "coalesced_missed": missed})

    def _missed_before(self, spec: ScheduleSpec, fire_at: datetime) -> int:
        """Occurrences between the last recorded fire and this one: skipped by the coalescing."""
        raw = self._redis.hget(keys.schedule_last(spec.function, spec.index), "scheduled_ms")
        if raw is None:
            return 0
        moment = datetime.fromtimestamp(int(raw) / 1000, UTC)
        schedule = parse(spec.event.expression, spec.event.timezone)
        count = 0
        while count < MAX_CATCH_UP:
            following = schedule.next_after(moment)
            if following is None or following >= fire_at:
                return count
            count += 1
            moment = following
        return count

    def _write_last(self, spec: ScheduleSpec, fire_at: datetime, *, request_id: str | None, late_s: float,
                    outcome: str) -> None:
        key = keys.schedule_last(spec.function, spec.index)
        self._redis.hset(key, mapping={
            "scheduled_ms": int(fire_at.timestamp() * 1000), "request_id": request_id or "",
            "fired_ms": int(datetime.now(UTC).timestamp() * 1000), "late_ms": int(late_s * 1000),
            "by": self._owner, "outcome": outcome})

    # -- following the catalog ---------------------------------------------------------------

    def _desired(self, services: Base) -> dict[str, ScheduleSpec]:
        specs = [ScheduleSpec(function=name, index=index, event=event.schedule)
                 for name, index, event in services.catalog.events("schedule")
                 if event.schedule is not None and event.schedule.enabled]
        return {spec.job_id: spec for spec in specs}

    def reconcile(self, services: Base) -> None:
        desired = self._desired(services)
        for job_id in list(self._specs):
            if desired.get(job_id) != self._specs[job_id]:
                self._scheduler.remove_job(job_id)
                del self._specs[job_id]
                log.info("schedule removed", extra={"schedule": job_id})
        for job_id, spec in desired.items():
            if job_id in self._specs or services.health.down:     # added once Redis answers (a later pass)
                continue
            schedule = parse(spec.event.expression, spec.event.timezone)
            # Resume from the last fire any replica recorded, so a gap in which every scheduler was down
            # is seen (fired late, or counted as missed); a new schedule starts from now.
            try:
                raw = self._redis.hget(keys.schedule_last(spec.function, spec.index), "scheduled_ms")
            except UNREACHABLE as exc:
                services.health.failed(exc)
                continue
            self._specs[job_id] = spec
            self._locks.setdefault(job_id, threading.Lock())
            now = datetime.now(UTC)
            resume = datetime.fromtimestamp(int(raw) / 1000, UTC) if raw is not None else now
            # Older occurrences could only be missed; they are counted at the next fire, not replayed here.
            resume = max(resume, now - timedelta(seconds=self._config.scheduler.misfire_grace_s))
            self._scheduler.add_job(_never_called, trigger=ExpressionTrigger(schedule), id=job_id, name=job_id,
                                    next_run_time=schedule.next_after(resume), replace_existing=True)
            log.info("schedule added", extra={"schedule": job_id, "expression": spec.event.expression,
                                              "timezone": spec.event.timezone})

    async def run(self) -> None:
        self._stop.install(asyncio.get_running_loop())
        self._services = services = await Base.start(self._config)
        # Connections idle in the pool died with the server: dropped before the owed fires go out.
        services.health.on_back(lambda: self._redis.connection_pool.disconnect(inuse_connections=False))
        changed = asyncio.Event()
        services.catalog.on_change(lambda _name: changed.set())
        self._scheduler.start()
        log.info("scheduler started", extra={"owner": self._owner})
        try:
            while not self._stop.is_set():
                self.reconcile(services)
                if self._owed and not services.health.down:
                    await asyncio.to_thread(self._fire_owed)
                changed.clear()
                waiters = [asyncio.create_task(self._stop.wait()), asyncio.create_task(changed.wait())]
                if self._owed:
                    waiters.append(asyncio.create_task(services.health.wait_back()))
                await asyncio.wait(waiters, timeout=1.0 if self._owed else 5.0, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            await self._shut_down(services)

    async def _shut_down(self, services: Base) -> None:
        """No new fires; those in flight finish until the drain deadline, then are abandoned (see above)."""
        self._scheduler.shutdown(wait=False)
        unfinished = await asyncio.to_thread(self._executor.drain, self._stop.drain_deadline())
        if unfinished:
            log.warning("fires still waiting for Redis were abandoned: another replica or the next start fires "
                        "them late", extra={"fires": unfinished})
        if self._owed:
            log.warning("occurrences owed since Redis went away are left to another replica or the next start "
                        "(fired late within scheduler.misfire_grace_s)", extra={"schedules": sorted(self._owed)})
        try:
            await asyncio.wait_for(services.stop(), timeout=max(0.5, self._stop.remaining_s() - 1.0))
        except _CLOSE_ERRORS as exc:
            log.warning("closing the Redis clients did not finish", extra={"error": str(exc) or type(exc).__name__})
        if not unfinished:
            self._redis.close()             # (not under a fire still in a call: it ends with the process)
        log.info("scheduler stopped", extra={"schedules": len(self._specs), "fired": self._fired})
        self._stop.stopped()


def _never_called() -> None:
    """APScheduler needs a callable per job; FireExecutor calls `fire` instead."""


def run_scheduler(config: Config) -> None:
    metrics.serve(config.metrics.scheduler_port, config.metrics.host, role="scheduler")
    stop = GracefulStop(role="scheduler", grace_s=config.scheduler.shutdown_grace_s)
    asyncio.run(SchedulerRunner(config, stop).run())
    stop.ignore_further()
