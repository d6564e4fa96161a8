"""`lambent scheduler`: APScheduler fires every `schedule` event as an async invocation, exactly once.

APScheduler (3.x, in-memory job store rebuilt from the catalog; see clock.py) keeps time; each occurrence is
handed to `fire`, which enqueues the invocation and claims the occurrence in one Redis transaction keyed by
schedule and fire time (state.py), so any number of replicas fire it once. The invocation id is derived from the
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
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..asyncq.store import AsyncStore
from ..config import Config
from ..functions.expressions import parse
from ..functions.spec import ScheduleEvent
from ..observability import metrics
from ..observability.outage import UNREACHABLE
from ..wiring import Base
from ..shutdown import GracefulStop
from .clock import Clock
from .state import CLAIM_TTL_S, FIRED, MISSED, Fire, LastFire, last_scheduled, record_missed

log = logging.getLogger(__name__)
# Closing what is left at shutdown: past its time, or Redis gone (nothing is waited for then).
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, *UNREACHABLE)
UTC = timezone.utc
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
        self._clock = Clock(self.fire)

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
        log.debug("schedule fire owed until Redis answers",
                  extra={"schedule": job_id, "scheduled": fire_at.isoformat()})

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
        if late_s > self._config.scheduler.misfire_grace_s:
            record_missed(self._redis, function=spec.function, index=spec.index, count=missed + 1,
                          last=self._last(fire_at, now, request_id=None, outcome=MISSED))
            metrics.SCHEDULE_MISSED.labels(spec.function, str(spec.index)).inc(missed + 1)
            log.warning("schedule fire missed: past the grace time", extra={
                "schedule": job_id, "scheduled": fire_at.isoformat(), "late_s": round(late_s, 3)})
            return
        request_id = request_id_for(spec.function, spec.index, fire_at)
        event = scheduled_event(spec=spec, fire_at=fire_at, request_id=request_id, region=self._config.region,
                                account=self._config.account_id)
        last = self._last(fire_at, now, request_id=request_id, outcome=FIRED)
        fire = Fire(function=spec.function, index=spec.index, fire_at=fire_at, last=last, late=late_s > 1.0,
                    missed=missed)
        fired = self._store.accept_once(
            claim_key=fire.claim_key, claim_ttl_s=CLAIM_TTL_S, function=spec.function, qualifier=spec.event.qualifier,
            payload=orjson.dumps(event), trigger="schedule", request_id=request_id, extra=fire.hashes,
            counts=fire.counts)
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
                                          "scheduled": fire_at.isoformat(), "late_ms": last.late_ms,
                                          "coalesced_missed": missed})

    def _last(self, fire_at: datetime, now: datetime, *, request_id: str | None, outcome: str) -> LastFire:
        return LastFire(scheduled_ms=int(fire_at.timestamp() * 1000), request_id=request_id,
                        fired_ms=int(now.timestamp() * 1000), late_ms=int((now - fire_at).total_seconds() * 1000),
                        by=self._owner, outcome=outcome)

    def _missed_before(self, spec: ScheduleSpec, fire_at: datetime) -> int:
        """Occurrences between the last recorded fire and this one: skipped by the coalescing."""
        moment = last_scheduled(self._redis, function=spec.function, index=spec.index)
        if moment is None:
            return 0
        schedule = parse(spec.event.expression, spec.event.timezone)
        count = 0
        while count < MAX_CATCH_UP:
            following = schedule.next_after(moment)
            if following is None or following >= fire_at:
                return count
            count += 1
            moment = following
        return count

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
                self._clock.remove(job_id)
                del self._specs[job_id]
                log.info("schedule removed", extra={"schedule": job_id})
        for job_id, spec in desired.items():
            if job_id in self._specs or services.health.down:     # added once Redis answers (a later pass)
                continue
            schedule = parse(spec.event.expression, spec.event.timezone)
            # Resume from the last fire any replica recorded, so a gap in which every scheduler was down
            # is seen (fired late, or counted as missed); a new schedule starts from now.
            try:
                last = last_scheduled(self._redis, function=spec.function, index=spec.index)
            except UNREACHABLE as exc:
                services.health.failed(exc)
                continue
            self._specs[job_id] = spec
            self._locks.setdefault(job_id, threading.Lock())
            now = datetime.now(UTC)
            resume = last if last is not None else now
            # Older occurrences could only be missed; they are counted at the next fire, not replayed here.
            resume = max(resume, now - timedelta(seconds=self._config.scheduler.misfire_grace_s))
            self._clock.add(job_id, schedule, schedule.next_after(resume))
            log.info("schedule added", extra={"schedule": job_id, "expression": spec.event.expression,
                                              "timezone": spec.event.timezone})

    async def run(self) -> None:
        self._stop.install(asyncio.get_running_loop())
        self._services = services = await Base.start(self._config)
        # Connections idle in the pool died with the server: dropped before the owed fires go out.
        services.health.on_back(lambda: self._redis.connection_pool.disconnect(inuse_connections=False))
        changed = asyncio.Event()
        services.catalog.on_change(lambda _name: changed.set())
        self._clock.start()
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
        self._clock.stop()
        unfinished = await asyncio.to_thread(self._clock.drain, self._stop.drain_deadline())
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


def run_scheduler(config: Config) -> None:
    metrics.serve(config.metrics.scheduler_port, config.metrics.host, role="scheduler")
    stop = GracefulStop(role="scheduler", grace_s=config.scheduler.shutdown_grace_s)
    asyncio.run(SchedulerRunner(config, stop).run())
    stop.ignore_further()
