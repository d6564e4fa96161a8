"""The maintenance thread of `lambent worker`: due retries onto the queue, the running invocation's lease
renewed, lapsed leases reaped (a lost job is handed to RQ again, a lost worker's invocation re-run).

While Redis is not reachable it waits with backoff (the process's one Outage says so once). Once Redis is
back it renews first and reaps nothing for a lease period: every live worker then has the time to renew its
leases and write the outcomes it kept through the outage before anyone takes their invocations for lost.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..config import Config
from ..redis_retry import UNREACHABLE, Backoff, Outage
from .record import Status
from .store import AsyncStore

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, config: Config, store: AsyncStore, outage: Outage, *, current: Callable[[], str | None],
                 lost_worker: Callable[[str, int], None]) -> None:
        self.config = config
        self.store = store
        self.outage = outage
        self._current = current                 # the request id this worker runs now, if any
        self._lost_worker = lost_worker         # re-runs an invocation whose worker was lost (claimed for it)
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="async-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        settings = self.config.async_
        next_renew = next_reap = 0.0
        backoff = Backoff()
        while not self.stopping.wait(settings.poll_s):
            try:
                self.store.promote_due()
                now = time.monotonic()
                current = self._current()
                if current is not None and now >= next_renew:
                    self.store.renew(current)
                    next_renew = now + settings.lease_s / 3
                if now >= next_reap:
                    self._reap()
                    next_reap = now + min(1.0, settings.lease_s / 4)
            except UNREACHABLE as exc:
                self.outage.failed(exc)
                self.outage.pause(backoff.next_s(), self.stopping.is_set)
                next_renew = 0.0
                next_reap = time.monotonic() + settings.lease_s
                continue
            except Exception:    # one bad record must not stop maintenance for every other one
                log.exception("async maintenance failed; continuing")
                continue
            self.outage.ok()
            backoff.reset()

    def _reap(self) -> None:
        for request_id in self.store.expired_leases():
            record = self.store.status(request_id)
            if record is None:
                self.store.drop_lease(request_id)
                continue
            if record.status in (Status.QUEUED, Status.RETRYING) and self.store.job_waiting(request_id,
                                                                                            record.delivery):
                self.store.extend_lease(request_id)     # a backlog, not a loss
                continue
            claimed = self.store.claim_expired(request_id)
            if claimed is None:
                continue
            new_delivery, status = claimed
            if status is Status.RUNNING:
                self._lost_worker(request_id, new_delivery)
            else:
                log.warning("re-delivering a queued invocation whose job was lost",
                            extra={"request_id": request_id})
                self.store.redeliver(request_id, new_delivery)
