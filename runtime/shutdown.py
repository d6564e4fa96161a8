"""Bounded shutdown of a long-running role (streams, scheduler): the first SIGTERM or SIGINT asks it to stop
within its grace period; a second signal (a second or more later), or the grace running out, ends the process
at once with exit code 1.

    stop = GracefulStop(role="streams", grace_s=config.streams.shutdown_grace_s)
    stop.install(asyncio.get_running_loop())
    while not stop.is_set(): ...          # the main loop; `await stop.wait()` wakes it
    ...drain in-flight work until stop.drain_deadline(), commit, close...
    stop.stopped()                        # the orderly part is done

The hard end (os._exit) is what makes the bound hold in every state: a call stuck on a Redis or a broker
that does not answer, or a thread that never returns, cannot keep the process alive. The process's own
child processes (sandboxes) are killed with it, so that no handler outlives its host.

Beside it, the two task helpers every role's parts stop and start work with: `cancel` (that ends a task even when a
library swallows the first cancel) and `in_background` (a task that is not collected while it runs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from typing import Any, Awaitable

log = logging.getLogger(__name__)

FORCED_EXIT = 1            # the exit code when the grace ran out or a second signal came
DUPLICATE_S = 1.0          # a second signal sooner than this is the same request: a terminal's Ctrl-C reaches
                           # the whole process group, and `lambent up` forwards it as SIGTERM as well
SETTLE_S = 2.0             # after the orderly part: the interpreter's own exit gets this long
CLOSE_RESERVE_S = 5.0      # of the grace, kept for commits and closing clients after in-flight work is drained


class GracefulStop:
    """One per process, made before its event loop runs; `install` takes over SIGTERM and SIGINT."""

    def __init__(self, *, role: str, grace_s: float) -> None:
        self.role = role
        self.grace_s = grace_s
        self._event = asyncio.Event()
        self._requested: float | None = None      # time.monotonic() of the first signal
        self._deadline: float | None = None       # the hard end
        self._done = False
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._signalled, signum)

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def drain_deadline(self) -> float:
        """The time.monotonic() by which in-flight work must have finished or been cut off: the grace less what
        committing and closing need (CLOSE_RESERVE_S, or a third of a short grace)."""
        start = self._requested if self._requested is not None else time.monotonic()
        return start + self.grace_s - min(CLOSE_RESERVE_S, self.grace_s / 3)

    def remaining_s(self) -> float:
        """Seconds to the hard end (the whole grace when no signal came: the role stops for another reason)."""
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self.grace_s
        return max(0.0, deadline - time.monotonic())

    def stopped(self) -> None:
        """The orderly part is done. Threads abandoned in calls that never returned must not hold the exit:
        the process ends by itself, or is ended with code 0 within SETTLE_S."""
        with self._lock:
            self._done = True
            if self._deadline is not None:
                self._deadline = min(self._deadline, time.monotonic() + SETTLE_S)
        self._wake.set()

    def ignore_further(self) -> None:
        """After the event loop is closed (which gives SIGTERM and SIGINT their default action back): a signal
        that comes now, such as `lambent up` passing on the Ctrl-C its role had from the terminal already, must not
        end the process with that signal in place of its exit code. Main thread only."""
        if self._event.is_set():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)

    def _signalled(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._requested is not None and time.monotonic() - self._requested < DUPLICATE_S:
            return
        if self._event.is_set():
            log.warning(f"second {name}: stopping {self.role} now; what was in flight is read or fired again later",
                        extra={"signal": name})
            _exit(FORCED_EXIT)
        self._requested = time.monotonic()
        self._deadline = self._requested + self.grace_s
        log.info(f"{name}: stopping {self.role} within {self.grace_s:g} s (a second signal stops it at once)",
                 extra={"signal": name, "grace_s": self.grace_s})
        self._event.set()
        threading.Thread(target=self._watch, name="shutdown-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            with self._lock:
                assert self._deadline is not None
                left = self._deadline - time.monotonic()
                done = self._done
            if left <= 0:
                break
            self._wake.wait(left)
            self._wake.clear()
        if done:
            log.warning(f"{self.role} stopped; abandoning calls that did not return", extra={"grace_s": self.grace_s})
            _exit(0)
        log.error(f"{self.role} did not stop within its grace period; exiting now", extra={"grace_s": self.grace_s})
        _exit(FORCED_EXIT)


def _exit(code: int) -> None:
    """End the process now: its child processes first (a sandbox runs in a session of its own, so it would
    otherwise finish its handler on its own), then the log lines so far, then the process."""
    _kill_children()
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:   # nothing may stop the exit
            pass
    os._exit(code)


def _kill_children() -> None:
    me = os.getpid()
    mine = os.getpgid(0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:          # fields: state, ppid, pgrp, ...
                continue
            pid, group = int(entry), int(fields[2])
            if group != mine:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):   # gone meanwhile, or not ours to kill
            continue


async def cancel(*tasks: asyncio.Task[None] | None, again_s: float = 0.1) -> None:
    """Cancel background tasks and wait until each has ended, cancelling again every `again_s` while one runs
    on: redis-py (8.1) can swallow the cancel of a task waiting in `PubSub.listen()` right after it subscribed,
    and one cancel would then leave the task, and whoever waits for it, running for ever. What a task raised on
    its way out is dropped (it is stopping)."""
    pending = {task for task in tasks if task is not None}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_s)
    for ended in tasks:
        if ended is not None and not ended.cancelled():
            ended.exception()       # retrieved, so that asyncio does not log it as never retrieved


_BACKGROUND: set[asyncio.Task[Any]] = set()


def in_background(work: Awaitable[Any]) -> asyncio.Task[Any]:
    """Run `work` as a task that nobody waits for (killing a sandbox that is no longer wanted): asyncio keeps only
    a weak reference to a task, so this keeps a strong one until it ends."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task
