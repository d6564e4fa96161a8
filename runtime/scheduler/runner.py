"""`lambent scheduler`: APScheduler fires every `schedule` event as an async invocation, exactly once.

APScheduler (3.x, in-memory job store rebuilt from the catalog) keeps time; each occurrence is handed
to `fire`, which enqueues the invocation and claims the occurrence in one Redis transaction keyed by
schedule and fire time, so any number of replicas fire it once. The invocation id is derived from the
same key. A replica that starts after a gap (every scheduler was down) resumes from the last fire
recorded in Redis: the latest missed occurrence is fired late when within `scheduler.misfire_grace_s`,
and the others are counted as missed (missed fires coalesce into one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from .. import keys
from ..config import Config
from ..functions.spec import ScheduleEvent
from ..observability import metrics
from ..services import Services
from .expressions import Schedule, parse

log = logging.getLogger(__name__)
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
    """Hands APScheduler's run times to `fire` (which needs the scheduled time, not just a call)."""

    def __init__(self, runner: SchedulerRunner) -> None:
        super().__init__()
        self._runner = runner
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fire")

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        def run() -> None:
            try:
                self._runner.fire(job.id, run_times)
            except Exception:   # one failed fire must not stop the schedule; the log says which
                log.exception("a schedule fire failed", extra={"schedule": job.id})
            self._run_job_success(job.id, [])

        self._pool.submit(run)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)


class SchedulerRunner:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._specs: dict[str, ScheduleSpec] = {}
        self._services: Services | None = None
        grace = config.scheduler.misfire_grace_s
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()}, executors={"default": FireExecutor(self)},
            # Set explicitly: late fires within the grace run once (coalesced); `fire` counts the rest.
            job_defaults={"coalesce": True, "misfire_grace_time": None if grace == 0 else int(grace) or 1,
                          "max_instances": 1},
            timezone=UTC)

    # -- firing ------------------------------------------------------------------------------

    def fire(self, job_id: str, run_times: list[datetime]) -> None:
        spec = self._specs.get(job_id)
        if spec is None or self._services is None:
            return
        fire_at = run_times[-1]
        now = datetime.now(UTC)
        late_s = (now - fire_at).total_seconds()
        missed = self._missed_before(spec, fire_at)
        stats = keys.schedule_stats(spec.function, spec.index)
        store = self._services.asyncq
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
        fired = store.accept_once(
            claim_key=keys.schedule_fired(spec.function, spec.index, int(fire_at.timestamp())), claim_ttl_s=CLAIM_TTL_S,
            function=spec.function, qualifier=spec.event.qualifier, payload=orjson.dumps(event), trigger="schedule",
            request_id=request_id, extra={keys.schedule_last(spec.function, spec.index): last})
        if not fired:
            return                                   # another replica fired this occurrence
        metrics.SCHEDULE_FIRES.labels(spec.function, str(spec.index)).inc()
        if late_s > 1.0:
            metrics.SCHEDULE_LATE.labels(spec.function, str(spec.index)).inc()
        if missed:
            metrics.SCHEDULE_MISSED.labels(spec.function, str(spec.index)).inc(missed)
        with store.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(stats, "fired", 1)
            if late_s > 1.0:
                pipe.hincrby(stats, "late", 1)
            if missed:
                pipe.hincrby(stats, "missed", missed)
            pipe.execute()
        log.info("schedule fired", extra={"schedule": job_id, "function": spec.function, "request_id": request_id,
                                          "scheduled": fire_at.isoformat(), "late_ms": last["late_ms"],
                                          "coalesced_missed": missed})

    def _missed_before(self, spec: ScheduleSpec, fire_at: datetime) -> int:
        """Occurrences between the last recorded fire and this one: skipped by the coalescing."""
        assert self._services is not None
        raw = self._services.asyncq.redis.hget(keys.schedule_last(spec.function, spec.index), "scheduled_ms")
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
        assert self._services is not None
        key = keys.schedule_last(spec.function, spec.index)
        self._services.asyncq.redis.hset(key, mapping={
            "scheduled_ms": int(fire_at.timestamp() * 1000), "request_id": request_id or "",
            "fired_ms": int(datetime.now(UTC).timestamp() * 1000), "late_ms": int(late_s * 1000),
            "by": self._owner, "outcome": outcome})

    # -- following the catalog ---------------------------------------------------------------

    def _desired(self, services: Services) -> dict[str, ScheduleSpec]:
        specs = [ScheduleSpec(function=name, index=index, event=event.schedule)
                 for name, index, event in services.catalog.events("schedule")
                 if event.schedule is not None and event.schedule.enabled]
        return {spec.job_id: spec for spec in specs}

    def reconcile(self, services: Services) -> None:
        desired = self._desired(services)
        for job_id in list(self._specs):
            if desired.get(job_id) != self._specs[job_id]:
                self._scheduler.remove_job(job_id)
                del self._specs[job_id]
                log.info("schedule removed", extra={"schedule": job_id})
        for job_id, spec in desired.items():
            if job_id in self._specs:
                continue
            schedule = parse(spec.event.expression, spec.event.timezone)
            self._specs[job_id] = spec
            # Resume from the last fire any replica recorded, so a gap in which every scheduler was down
            # is seen (fired late, or counted as missed); a new schedule starts from now.
            raw = services.asyncq.redis.hget(keys.schedule_last(spec.function, spec.index), "scheduled_ms")
            now = datetime.now(UTC)
            resume = datetime.fromtimestamp(int(raw) / 1000, UTC) if raw is not None else now
            # Older occurrences could only be missed; they are counted at the next fire, not replayed here.
            resume = max(resume, now - timedelta(seconds=self._config.scheduler.misfire_grace_s))
            self._scheduler.add_job(_never_called, trigger=ExpressionTrigger(schedule), id=job_id, name=job_id,
                                    next_run_time=schedule.next_after(resume), replace_existing=True)
            log.info("schedule added", extra={"schedule": job_id, "expression": spec.event.expression,
                                              "timezone": spec.event.timezone})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self._services = await Services.start(self._config, deploy_functions=False)
        changed = asyncio.Event()
        self._services.catalog.on_change(lambda _name: changed.set())
        self._scheduler.start()
        log.info("scheduler started", extra={"owner": self._owner})
        try:
            while not stop.is_set():
                self.reconcile(self._services)
                changed.clear()
                waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(changed.wait())]
                await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            self._scheduler.shutdown(wait=True)
            await self._services.stop()
            log.info("scheduler stopped", extra={"schedules": len(self._specs)})


def _never_called() -> None:
    """APScheduler needs a callable per job; FireExecutor calls `fire` instead."""


def run_scheduler(config: Config) -> None:
    metrics.serve(config.metrics.scheduler_port, config.metrics.host, role="scheduler")
    asyncio.run(SchedulerRunner(config).run())
