"""APScheduler keeps the time of every schedule, through its public API only; each occurrence goes to `fire`.

`fire` needs the occurrence's scheduled time, which APScheduler gives a job's function no way to see. Its
documented extension point for that, a BaseExecutor subclass, must implement the abstract `_do_submit_job` and
report back through `_run_job_success`, both private. So no executor of ours: each job is a no-op that
APScheduler's own ThreadPoolExecutor runs, and a listener of its submission events (JobSubmissionEvent, whose
`scheduled_run_times` is public) hands the run times to `fire`, on a few daemon threads of ours: a fire stuck on
a Redis that does not answer must not hold the process's exit. One fire per schedule at a time (max_instances 1,
as APScheduler would count it): an occurrence due while the previous fire still runs is skipped, and counted
missed by the next fire.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from ..functions.expressions import Schedule

log = logging.getLogger(__name__)
UTC = timezone.utc
FireCall = Callable[[str, list[datetime]], None]     # fire(job id, run times): the last one is the occurrence
_ALIAS = "default"


class ExpressionTrigger(BaseTrigger):
    """An APScheduler trigger over our own expressions (which know AWS's L, W and # and DST rules)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return self.schedule.next_after(previous_fire_time or now)


def _occurrence() -> None:
    """The job APScheduler runs at each occurrence: nothing (the listener hands the occurrence to `fire`)."""


class Clock:
    THREADS = 4

    def __init__(self, fire: FireCall) -> None:
        self._fire = fire
        self._queue: queue.SimpleQueue[tuple[str, list[datetime]] | None] = queue.SimpleQueue()
        self._running: set[str] = set()         # schedules with a fire submitted and not finished
        self._idle = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"fire-{n}", daemon=True)
                         for n in range(self.THREADS)]
        # The no-op's runs say nothing: two lines per occurrence otherwise (what fires is logged by `fire`).
        logging.getLogger(f"apscheduler.executors.{_ALIAS}").setLevel(logging.WARNING)
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()}, executors={_ALIAS: ThreadPoolExecutor(max_workers=1)},
            # Late occurrences coalesce into one; the no-op always runs: `fire` judges the grace, and counts the rest.
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1}, timezone=UTC)
        # A submission refused because the no-op is still running carries its run times too: none is lost.
        self._scheduler.add_listener(self._submitted, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._scheduler.start()

    def add(self, job_id: str, schedule: Schedule, first: datetime | None) -> None:
        """Follow `schedule` from its occurrence `first` (None: a schedule with no occurrence left, held)."""
        self._scheduler.add_job(_occurrence, trigger=ExpressionTrigger(schedule), id=job_id, name=job_id,
                                next_run_time=first, replace_existing=True)

    def remove(self, job_id: str) -> None:
        self._scheduler.remove_job(job_id)

    def _submitted(self, event: JobSubmissionEvent) -> None:
        with self._idle:
            if event.job_id in self._running:
                log.warning("schedule fire skipped: the previous one is still running", extra={
                    "schedule": event.job_id, "scheduled": event.scheduled_run_times[-1].isoformat()})
                return
            self._running.add(event.job_id)
        self._queue.put((event.job_id, list(event.scheduled_run_times)))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job_id, run_times = item
            try:
                self._fire(job_id, run_times)
            except Exception:   # one failed fire must not stop the schedule; the log says which
                log.exception("a schedule fire failed", extra={"schedule": job_id})
            finally:
                with self._idle:
                    self._running.discard(job_id)
                    self._idle.notify_all()

    def stop(self) -> None:
        """No new occurrences; the fires submitted so far still run (see `drain`)."""
        self._scheduler.shutdown(wait=False)
        for _ in self._threads:
            self._queue.put(None)               # after the fires queued so far

    def drain(self, until: float) -> int:
        """Wait until the fires submitted so far are done, or `until` (time.monotonic()); how many are not."""
        with self._idle:
            while self._running and (left := until - time.monotonic()) > 0:
                self._idle.wait(left)
            return len(self._running)
