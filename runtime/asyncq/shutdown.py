"""`lambent worker`'s bounded shutdown: SIGTERM / SIGINT stop it within its grace period, whatever it is doing.

The first signal stops intake (`stopping` is set: no new job is taken, a wait for Redis gives up) and starts
the grace period. The running invocation may finish until shortly before its end (`RESERVE_S` is kept for the
steps after it); then `abandon` is set and `on_abandon` stops it (its sandbox is killed, its lease released so
that another worker runs it again). A second signal, a second or more after the first, abandons at once.
Should anything still block, the process exits by itself at the end of the grace (at once + 1 s after a
second signal), with exit code 1.

No signal handler does more than note the signal (a handler runs between two bytecodes of the main thread,
which may hold any lock): `signal.set_wakeup_fd` wakes a timekeeper thread of its own, which does the rest.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

DUPLICATE_S = 1.0       # a second signal sooner than this is the same request: a terminal's Ctrl-C reaches the
                        # whole process group, and `worker --concurrency N` forwards it as well
RESERVE_S = 2.0         # of the grace, kept for what follows the running invocation (at most a third of it)
FORCED_EXIT_S = 1.0     # after a second signal, the process is gone within this


class Shutdown:
    """The shutdown's state (`stopping`, `abandon`, `forced`), kept by its own thread once installed."""

    def __init__(self, grace_s: float, *, on_abandon: Callable[[], None] = lambda: None) -> None:
        self.grace_s = grace_s
        self.stopping = threading.Event()      # first signal: take no new work
        self.abandon = threading.Event()       # the grace is used up, or a second signal: stop what runs
        self.forced = False
        self.on_abandon = on_abandon
        self._first: float | None = None
        self._exit_at: float | None = None

    @property
    def abandon_at(self) -> float | None:
        """Monotonic time at which the running invocation is stopped (None before a signal)."""
        if self._first is None:
            return None
        return self._first + self.grace_s - min(RESERVE_S, self.grace_s / 3)

    @property
    def exit_by(self) -> float | None:
        """Monotonic time by which the process has exited (None before a signal)."""
        return self._exit_at

    def install(self) -> None:
        """From the main thread, before the work starts."""
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _noted)
        self._sockets = (reader, writer)       # kept open for the life of the process
        threading.Thread(target=self._keep_time, args=(reader,), name="shutdown", daemon=True).start()

    # -- the timekeeper thread ---------------------------------------------------------------------------

    def _keep_time(self, reader: socket.socket) -> None:
        while True:
            due = [t for t in (None if self.abandon.is_set() else self.abandon_at, self._exit_at) if t is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            readable, _, _ = select.select([reader], [], [], timeout)
            if readable:
                for _ in reader.recv(64):          # one byte per signal
                    self._received(time.monotonic())
            now = time.monotonic()
            abandon_at = self.abandon_at
            if abandon_at is not None and now >= abandon_at and not self.abandon.is_set():
                log.warning("the shutdown grace is nearly used up: stopping what still runs",
                            extra={"grace_s": self.grace_s})
                self._abandon()
            if self._exit_at is not None and now >= self._exit_at:
                log.error("the worker did not stop in time; exiting now", extra={"grace_s": self.grace_s})
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(1)

    def _received(self, now: float) -> None:
        if self._first is None:
            self._first = now
            self._exit_at = now + self.grace_s
            log.info("stop requested: taking no new invocation; the running one may finish",
                     extra={"grace_s": self.grace_s})
            self.stopping.set()
        elif now - self._first >= DUPLICATE_S and not self.forced:
            self.forced = True
            self._exit_at = min(self._exit_at or now + FORCED_EXIT_S, now + FORCED_EXIT_S)
            log.warning("second stop request: stopping at once")
            self._abandon()

    def _abandon(self) -> None:
        self.abandon.set()
        try:
            self.on_abandon()
        except Exception:
            log.exception("could not stop the running invocation")


def _noted(signum: int, frame: object) -> None:
    """The Python-level handler: nothing to do, the wakeup fd has told the timekeeper (installing it keeps
    SIGTERM from killing the process and SIGINT from raising KeyboardInterrupt)."""
