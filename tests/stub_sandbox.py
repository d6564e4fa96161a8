"""An in-process stand-in for SandboxProcess, in the spirit of dramatiq's StubBroker: scripted answers, every
call recorded, nothing started. `StubLauncher.spawn` is what runtime.executor.pool.Pools is given to make them."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.executor.process import InitFailed, Reply, SandboxGone
from runtime.functions.catalog import Version

_numbers = itertools.count(1)


@dataclass(eq=False, kw_only=True)
class StubSandbox:
    """SandboxProcess's interface. `answers`: what its invocations return, in order (a Reply, or an exception to
    raise); when they run out, a success of `{}`. `gate`: when set, each invocation waits for it to be set."""
    version: Version
    pid: int = field(default_factory=lambda: next(_numbers))
    init_ms: float = 5.0
    init_logs: str = ""
    last_used: float = field(default_factory=time.monotonic)
    answers: list[Reply | BaseException] = field(default_factory=list)
    gate: asyncio.Event | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)     # the headers it was invoked with
    running: int = 0                    # invocations in it now
    most_running: int = 0               # at once, ever
    killed: bool = False
    dead: bool = False                  # set by a test: the process "exited"

    @property
    def alive(self) -> bool:
        return not self.killed and not self.dead

    async def invoke(self, header: dict[str, Any], payload: bytes, *, timeout_s: float, logs: list[str],
                     poll_s: float = 0.0) -> Reply:
        self.calls.append(header)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            answer = self.answers.pop(0) if self.answers else success()
            if isinstance(answer, BaseException):
                if isinstance(answer, (asyncio.TimeoutError, SandboxGone)):
                    self.killed = True
                raise answer
            self.last_used = time.monotonic()
            return answer
        finally:
            self.running -= 1

    def out_of_memory(self) -> bool:
        return False

    async def kill(self) -> None:
        self.killed = True


def success(payload: bytes = b"{}", *, duration_ms: float = 1.0, cpu_ms: float = 0.1) -> Reply:
    """A sandbox's answer to an invocation that returned `payload`."""
    return Reply(header={"t": "result", "ok": True, "duration_ms": duration_ms, "cpu_ms": cpu_ms, "queued_ms": 0.0,
                         "max_rss_kb": 20480, "out": 0}, payload=payload, logs="")


@dataclass(kw_only=True)
class StubLauncher:
    """Makes StubSandboxes, as runtime.executor.launcher.Launcher makes real ones (give it to Pools as `spawn`, or
    to Executor as `launcher`). `answers`: one script shared by every sandbox it makes (see StubSandbox).
    `init_errors`: raised by the next spawns, in order (Lambda's init error objects). `gate`: given to each."""
    spawned: list[StubSandbox] = field(default_factory=list)
    answers: list[Reply | BaseException] = field(default_factory=list)
    init_errors: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    isolation: Any = None

    async def spawn(self, version: Version, *, cpus: set[int] | None = None) -> StubSandbox:
        await asyncio.sleep(0)          # a start is never instant: let the other callers run meanwhile
        if self.init_errors:
            raise InitFailed(self.init_errors.pop(0), init_ms=1.0, logs="init failed\n")
        sandbox = StubSandbox(version=version, gate=self.gate, answers=self.answers)
        self.spawned.append(sandbox)
        return sandbox

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def prefetch(self, name: str) -> None:
        pass
