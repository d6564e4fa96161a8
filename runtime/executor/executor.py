"""The one boundary where user code runs: `Executor.invoke(target, payload, ...) -> InvocationResult`.

Every way in (HTTP, async job, Kafka batch, cron fire) ends here. This node keeps warm pools of
sandbox processes per function version, enforces timeouts and reserved concurrency, turns every
failure into Lambda's error shape, and frames the captured logs with START / END / REPORT lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from ..config import Config
from ..events.trace import trace_header
from ..functions import deps
from ..functions.catalog import LATEST, Catalog, Target, Version
from ..functions.spec import FunctionSpec
from ..functions.package import Package, unpack
from ..jail import Isolation, View
from ..observability import metrics
from ..observability.logs import LogSink
from ..observability.stats import StatsSink
from .concurrency import ConcurrencyLimiter
from .prestart import Prestarted
from .process import BOOTSTRAP, InitFailed, SandboxGone, SandboxProcess, bootstrap_argv
from .result import InvocationResult, Outcome

log = logging.getLogger(__name__)


class Busy(Exception):
    """No sandbox could be had on this node within the acquire timeout."""


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[SandboxProcess | None]
    queued: float                       # monotonic
    give_up_at: float                   # the caller's acquire deadline
    watch_stall: bool                   # starts a sandbox of its own when none comes free for a while


@dataclass(eq=False)
class _Pool:
    """The sandboxes of one function version on this node."""
    version: Version
    idle: list[SandboxProcess] = field(default_factory=list)
    size: int = 0                       # idle + busy + starting
    retired: bool = False
    last_init_error: dict[str, Any] | None = None
    # Callers queued for a busy sandbox, oldest first; None handed over means "look again".
    waiters: collections.deque[_Waiter] = field(default_factory=collections.deque)
    watchdog: asyncio.TimerHandle | None = None       # runs while callers are queued (_watch)
    cpu_share: float = 0.0              # the handler's CPU time over its duration (moving average)
    duration_s: float = 0.0             # the handler's duration (moving average)
    last_freed: float = 0.0             # when a sandbox was last handed on or put back (monotonic)

    def cpu_bound(self) -> bool:
        """A handler that computes rather than waits: more sandboxes than CPUs would not run it sooner."""
        return self.cpu_share >= CPU_BOUND_SHARE

    def stalled_for(self) -> float:
        """How long no sandbox may come free before one queued caller stops waiting and starts one: twice
        the handler's usual duration, and at least a cold start's time. A handler that waits on another
        invocation of itself (queued behind it) is thus delayed, never deadlocked."""
        return max(MIN_STALL_S, 2 * (self.duration_s + 0.001))

    def wake_all(self) -> None:
        """Every queued caller looks again (the pool is going away)."""
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.set_result(None)
        self.waiters.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def queued(self) -> bool:
        return any(not waiter.future.done() for waiter in self.waiters)

    def learn(self, *, duration_ms: float, cpu_ms: float, queued_ms: float) -> None:
        """One invocation's figures from the sandbox. Time spent waiting for a CPU is left out: a
        handler slowed by the others sharing its CPU is still one that more sandboxes would not speed up."""
        self.duration_s += _EWMA * (duration_ms / 1000 - self.duration_s)
        share = min(1.0, cpu_ms / max(duration_ms - queued_ms, 0.001))
        self.cpu_share += _EWMA * (share - self.cpu_share)


_OUT_OF_MEMORY = {"errorType": "Runtime.OutOfMemory", "stackTrace": [],
                  "errorMessage": "Runtime exited: the function's processes ran out of memory"}
CPU_BOUND_SHARE = 0.5
XRAY_DAEMON = "169.254.79.129:2000"     # Lambda's AWS_XRAY_DAEMON_ADDRESS
MIN_STALL_S = 0.1
_EWMA = 0.2       # weight of the newest sample in a pool's moving average


class Executor:
    def __init__(self, config: Config, *, catalog: Catalog, limiter: ConcurrencyLimiter, logs: LogSink,
                 stats: StatsSink | None = None) -> None:
        self._config = config
        self._catalog = catalog
        self._limiter = limiter
        self._logs = logs
        self._stats = stats
        # _pool_key: on Lambda, $LATEST and a published version are separate environments, each told which it
        # is (AWS_LAMBDA_FUNCTION_VERSION, the log stream), even while they have the same content.
        self._pools: dict[tuple[str, int, int], _Pool] = {}
        self._total = 0
        self._changed = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._prefetching: set[asyncio.Task[None]] = set()
        self._sandbox_cpus: set[int] | None = None
        self.isolation = Isolation.open(config)
        self._argv = bootstrap_argv(self.isolation.bootstrap_path or str(BOOTSTRAP))
        self._prestarted = (Prestarted(self._start_blank, per_shape=config.sandbox.prestarted)
                            if self.isolation.starts_ahead and config.sandbox.prestarted > 0 else None)
        available = os.sched_getaffinity(0)
        if config.sandbox.separate_cpu and len(available) >= 2:
            mine = max(available)
            os.sched_setaffinity(0, {mine})
            self._sandbox_cpus = available - {mine}
        # A CPU-bound version gets this many sandboxes, two per CPU they run on (one computes while the
        # other's answer is on its way); callers queue for them past that.
        self._cpu_sandboxes = 2 * len(self._sandbox_cpus or available)
        self.cold_starts = 0
        self.warm_starts = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._catalog.on_change(self._retire_stale)
        self._reaper = asyncio.create_task(self._reap_idle())
        if self._prestarted is not None:
            self._prestarted.begin()

    async def stop(self) -> None:
        if self._prestarted is not None:
            await self._prestarted.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for pool in self._pools.values():
            pool.retired = True
            pool.wake_all()
            while pool.idle:
                await pool.idle.pop().kill()

    def state(self, name: str) -> dict[str, Any]:
        """This node's sandboxes of a function, and the last init error if its import failed."""
        pools = [pool for (function, _, _), pool in self._pools.items() if function == name]
        errors = [pool.last_init_error for pool in pools if pool.last_init_error]
        return {"sandboxes": sum(pool.size for pool in pools), "idle": sum(len(pool.idle) for pool in pools),
                "last_init_error": errors[-1] if errors else None}

    # -- the boundary ----------------------------------------------------------------------

    async def invoke(self, target: Target, payload: bytes, *, request_id: str | None = None,
                     trigger: str = "sync", attempt: int = 1, client_context: Any = None,
                     trace_id: str | None = None) -> InvocationResult:
        """Run one invocation. `trace_id`: its X-Ray header (events.trace); a new unsampled one when None."""
        request_id = request_id or str(uuid.uuid4())
        version = target.version
        spec = version.spec
        lease = None
        # Reserved concurrency is the function's, whichever version runs: $LATEST's configuration says it.
        reserved = (self._catalog.latest(version.function) or version).spec.reserved_concurrency
        if reserved is not None:
            lease = await self._limiter.acquire(version.function, limit=reserved, timeout_s=spec.timeout_s)
            if lease is None:
                return self._finish(target, request_id, trigger, Outcome.THROTTLED, b"null", logs="", attempt=attempt)
        running = metrics.child(metrics.CONCURRENT, version.function)
        running.inc()
        try:
            return await self._run(target, payload, request_id=request_id, trigger=trigger, attempt=attempt,
                                   client_context=client_context, trace_id=trace_id or trace_header())
        finally:
            running.dec()
            if lease is not None:
                await self._limiter.release(version.function, lease)

    async def _run(self, target: Target, payload: bytes, *, request_id: str, trigger: str, attempt: int,
                   client_context: Any, trace_id: str) -> InvocationResult:
        version = target.version
        spec = version.spec
        try:
            sandbox, cold = await self._acquire(version)
        except InitFailed as failure:
            error = {**failure.error, "requestId": request_id}
            return self._finish(target, request_id, trigger, Outcome.INIT_ERROR, orjson.dumps(error),
                                logs="", init_logs=failure.logs, init_ms=failure.init_ms, attempt=attempt)
        header = {"id": request_id, "deadline_ms": int(time.time() * 1000 + spec.timeout_s * 1000),
                  "arn": self.arn(version.function, target.qualifier, named=target.named),
                  "version": target.executed_version,
                  "attempt": attempt, "client_context": client_context, "trace_id": trace_id}
        logs: list[str] = []
        init_ms = sandbox.init_ms if cold else None
        prefix = sandbox.init_logs if cold else ""
        started = time.perf_counter()
        reply = None
        try:
            reply = await sandbox.invoke(header, payload, timeout_s=spec.timeout_s, logs=logs)
            # A process of its tree was killed for memory (the sandbox is then not reused): the invocation fails.
            out_of_memory = sandbox.out_of_memory()
        except asyncio.TimeoutError:
            message = f"RequestId: {request_id} Error: Task timed out after {spec.timeout_s:.2f} seconds"
            logs.append(f"{_now_iso()} {request_id} Task timed out after {spec.timeout_s:.2f} seconds\n")
            error = {"errorType": "Sandbox.Timedout", "errorMessage": message, "requestId": request_id}
            return self._finish(target, request_id, trigger, Outcome.TIMEOUT, orjson.dumps(error),
                                logs="".join(logs), init_logs=prefix, duration_ms=spec.timeout_s * 1000,
                                init_ms=init_ms, attempt=attempt)
        except SandboxGone as gone:
            message = f"RequestId: {request_id} Error: {gone.reason}"
            logs.append(f"{message}\n")
            error = {"errorType": "Runtime.OutOfMemory" if gone.out_of_memory else "Runtime.ExitError",
                     "errorMessage": message, "requestId": request_id}
            return self._finish(target, request_id, trigger, Outcome.CRASH, orjson.dumps(error),
                                logs="".join(logs), init_logs=prefix,
                                duration_ms=(time.perf_counter() - started) * 1000, init_ms=init_ms,
                                attempt=attempt)
        finally:
            await self._release(version, sandbox, None if reply is None else reply.header)
        head = reply.header
        memory_mb = int(head.get("max_rss_kb", 0)) // 1024
        if out_of_memory:
            head = {**head, "ok": False, "fatal": True, "error": {**_OUT_OF_MEMORY, "requestId": request_id}}
        if head["ok"]:
            outcome, body = Outcome.SUCCESS, reply.payload
            limit = self._config.gateway.sync_payload_limit_bytes
            if len(body) > limit:
                outcome = Outcome.ERROR
                body = orjson.dumps({"errorType": "Function.ResponseSizeTooLarge", "requestId": request_id,
                                     "errorMessage": "Response payload size exceeded maximum allowed payload "
                                                     f"size ({limit} bytes)."})
        else:
            outcome = Outcome.CRASH if head.get("fatal") else Outcome.ERROR
            body = orjson.dumps(head["error"])
        return self._finish(target, request_id, trigger, outcome, body, logs=reply.logs, init_logs=prefix,
                            duration_ms=head["duration_ms"], init_ms=init_ms, memory_mb=memory_mb,
                            attempt=attempt)

    def _finish(self, target: Target, request_id: str, trigger: str, outcome: Outcome, payload: bytes, *,
                logs: str, init_logs: str = "", duration_ms: float = 0.0, init_ms: float | None = None,
                memory_mb: int = 0, attempt: int = 1) -> InvocationResult:
        version = target.version
        spec = version.spec
        if outcome is not Outcome.THROTTLED:
            logs = _platform_lines(spec, target.executed_version, request_id, outcome, logs=logs,
                                   init_logs=init_logs, duration_ms=duration_ms, init_ms=init_ms, memory_mb=memory_mb)
            self._logs.record(function=version.function, version=version.label, request_id=request_id, text=logs)
        if self._stats is not None:
            self._stats.record(function=version.function, ok=outcome is Outcome.SUCCESS,
                               throttled=outcome is Outcome.THROTTLED, duration_ms=duration_ms)
        metrics.observe_invocation(function=version.function, version=version.label, trigger=trigger,
                                   outcome=outcome.value, duration_s=duration_ms / 1000,
                                   init_s=None if init_ms is None else init_ms / 1000)
        result = InvocationResult(request_id=request_id, function=version.function, version=version.label,
                                  executed_version=target.executed_version, outcome=outcome, payload=payload,
                                  logs=logs, duration_ms=duration_ms, init_ms=init_ms, max_memory_mb=memory_mb)
        if log.isEnabledFor(logging.INFO):
            log.info("invocation %s", outcome.value, extra={
                "function": version.function, "version": version.label, "request_id": request_id,
                "trigger": trigger, "attempt": attempt, "duration_ms": round(duration_ms, 2), "logs": logs})
        return result

    def arn(self, function: str, qualifier: str | None = None, *, named: bool = False) -> str:
        """The function's ARN, with its qualifier; $LATEST only where the caller wrote it, as Lambda's
        invoked_function_arn."""
        base = f"arn:aws:lambda:{self._config.region}:{self._config.account_id}:function:{function}"
        return f"{base}:{qualifier}" if qualifier and (qualifier != LATEST or named) else base

    # -- pools -----------------------------------------------------------------------------

    async def _acquire(self, version: Version) -> tuple[SandboxProcess, bool]:
        """A warm sandbox of `version` (False), or a new one (True, cold).

        When every sandbox of the version is busy, a new one starts, as Lambda does, unless the version is
        at max_per_function or its handler is CPU-bound and has two sandboxes per CPU already: then the
        caller queues for the next sandbox released, first come first served. Past that point more
        processes would only share the same CPUs, each invocation taking longer. A queued caller that
        sees no sandbox come free for a while (_Pool.stalled_for) starts one after all. Waits when the
        node is full; Busy after sandbox.acquire_timeout_s."""
        key = _pool_key(version)
        deadline = time.monotonic() + self._config.sandbox.acquire_timeout_s
        impatient = False
        while True:
            async with self._changed:
                pool = self._pools.get(key)
                if pool is None:
                    pool = self._pools[key] = _Pool(version=version)
                pool.retired = False    # asked for again (by number or alias): keep its sandboxes warm
                while pool.idle:
                    sandbox = pool.idle.pop()
                    if sandbox.alive:
                        self.warm_starts += 1
                        return sandbox, False
                    pool.size -= 1
                    self._total -= 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Busy(f"no free sandbox for {version.function} on this node")
                at_max = pool.size >= self._config.sandbox.max_per_function
                queue = at_max or (not impatient and pool.size >= self._cpu_sandboxes and pool.cpu_bound())
                if not queue:
                    if self._total >= self._config.sandbox.max_per_node:
                        await self._evict_one_idle()
                    if self._total < self._config.sandbox.max_per_node:
                        pool.size += 1
                        self._total += 1
                        break
                    with contextlib.suppress(asyncio.TimeoutError):    # the node is full: wait for room
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    continue
                now = time.monotonic()
                waiter = _Waiter(asyncio.get_running_loop().create_future(), now, now + remaining, not at_max)
                pool.waiters.append(waiter)
                if pool.watchdog is None:
                    pool.watchdog = asyncio.get_running_loop().call_later(min(pool.stalled_for(), remaining),
                                                                          _watch, pool)
            if (handed := await _wait_for(pool, waiter)) is not None:
                self.warm_starts += 1
                return handed, False
            impatient = True
        try:
            sandbox = await self._spawn(version)
        except BaseException as exc:
            async with self._changed:
                pool.size -= 1
                self._total -= 1
                if isinstance(exc, InitFailed):
                    pool.last_init_error = exc.error
                _hand_on(pool, None)             # a queued caller may start one (or get this error) instead
                self._changed.notify_all()
            raise
        pool.last_init_error = None
        self.cold_starts += 1
        return sandbox, True

    async def _spawn(self, version: Version) -> SandboxProcess:
        task_root, extra_path = await self.prepare(version)
        return await self._start(version, task_root, extra_path, cpus=self._sandbox_cpus)

    async def _start(self, version: Version, task_root: Path, extra_path: list[str], *,
                     cpus: set[int] | None = None) -> SandboxProcess:
        """A sandbox of `version`, its init done: a jail started ahead of time when one is ready, else a new one."""
        spec = version.spec
        env = self.sandbox_env(version)
        deps = Path(extra_path[0]) if extra_path else None
        shape = (spec.network != "none", spec.ephemeral_storage_mb)
        sandbox = self._prestarted.take(shape) if self._prestarted is not None else None
        if sandbox is None:
            view = View(task_root=None if self.isolation.starts_ahead else task_root, deps=deps,
                        ephemeral_mb=spec.ephemeral_storage_mb, network=shape[0])
            sandbox = await SandboxProcess.start(self.isolation.launch(view, argv=self._argv, env=env,
                                                                       memory_mb=spec.memory_mb))
        await sandbox.init(handler=spec.handler, memory_mb=spec.memory_mb, env=env, task_root=task_root, deps=deps,
                           cpus=cpus)
        return sandbox

    async def _start_blank(self, shape: tuple[bool, int]) -> SandboxProcess:
        """A jail that knows no function yet (see prestart)."""
        view = View(task_root=None, deps=None, network=shape[0], ephemeral_mb=shape[1])
        launch = self.isolation.launch(view, argv=self._argv, env=self.isolation.base_env(), memory_mb=128)
        return await SandboxProcess.start(launch)

    async def prepare(self, version: Version) -> tuple[Path, list[str]]:
        """A version's code and dependency folder on this node: unpacked and installed once, then cached."""
        task_root = await self._catalog.code_path(version)
        return task_root, await asyncio.to_thread(self._dependencies, task_root)

    def _dependencies(self, task_root: Path) -> list[str]:
        requirements = task_root / "requirements.txt"
        if not requirements.is_file():
            return []
        python = self._config.sandbox.python or os.path.realpath(sys.executable)
        # One cache per interpreter: packages built for one Python are not reused by another.
        deps_dir = self._config.data_dir / "deps" / hashlib.sha256(python.encode()).hexdigest()[:12]
        folder = deps.install(requirements.read_bytes(), deps_dir=deps_dir, python=python,
                              timeout_s=self._config.deploy.install_timeout_s)
        return [str(folder)] if folder is not None else []

    async def trial_init(self, name: str, package: Package) -> dict[str, Any] | None:
        """Unpack, install and import a package in a throw-away sandbox before it becomes a version:
        None when the handler imports, else Lambda's init error (with the init logs). Raises DepsError."""
        task_root = await asyncio.to_thread(unpack, package.zip_bytes, self._config.data_dir / "code" / package.code_hash)
        extra_path = await asyncio.to_thread(self._dependencies, task_root)
        trial = Version(function=name, number=0, code_hash=package.code_hash, spec=package.spec, created="")
        try:
            sandbox = await self._start(trial, task_root, extra_path)
        except InitFailed as failure:
            return {**failure.error, "logs": failure.logs}
        await sandbox.kill()
        return None

    async def _prefetch(self, name: str) -> None:
        """Another node deployed: unpack the code and install its dependencies now, not on first invocation."""
        latest = self._catalog.latest(name)
        if latest is None:
            return
        try:
            await self.prepare(latest)
        except Exception:   # the first invocation will try again and report the error to its caller
            log.warning("could not prepare a new version", extra={"function": name, "revision": latest.revision},
                        exc_info=True)

    def sandbox_env(self, version: Version) -> dict[str, str]:
        """Only what Lambda sets plus the function's own variables: never the server's environment.
        (LAMBDA_TASK_ROOT is added where the code is known: see SandboxProcess.init.)"""
        spec = version.spec
        label = version.label
        today = datetime.now(timezone.utc).strftime("%Y/%m/%d")
        env = {
            **self.isolation.base_env(),
            "_HANDLER": spec.handler, "AWS_REGION": self._config.region,
            "AWS_DEFAULT_REGION": self._config.region, "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
            "AWS_LAMBDA_FUNCTION_NAME": version.function, "AWS_LAMBDA_FUNCTION_VERSION": label,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{version.function}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{today}/[{label}]{uuid.uuid4().hex}",
            # As Lambda (a function may set its own): where an X-Ray daemon would listen, and that tracing
            # code logs, rather than raises, when it finds no trace.
            "AWS_XRAY_DAEMON_ADDRESS": XRAY_DAEMON, "_AWS_XRAY_DAEMON_ADDRESS": XRAY_DAEMON.split(":")[0],
            "_AWS_XRAY_DAEMON_PORT": XRAY_DAEMON.split(":")[1], "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
            "AWS_LAMBDA_LOG_FORMAT": spec.logging.format,
        }
        if spec.logging.is_json:
            env["AWS_LAMBDA_LOG_LEVEL"] = spec.logging.application_log_level or "INFO"
        env.update(spec.environment)
        return env

    async def _release(self, version: Version, sandbox: SandboxProcess, reply: dict[str, Any] | None = None
                       ) -> None:
        """Hand the sandbox on, or stop it: it died, its version was retired, or it is one sandbox too many
        for a CPU-bound handler (a burst that came before the pool knew started one per caller)."""
        key = _pool_key(version)
        async with self._changed:
            pool = self._pools.get(key)
            if reply is not None and pool is not None:
                pool.learn(duration_ms=reply["duration_ms"], cpu_ms=reply.get("cpu_ms", 0.0),
                           queued_ms=reply.get("queued_ms", 0.0))
            surplus = (pool is not None and pool.size > self._cpu_sandboxes and pool.cpu_bound()
                       and not pool.queued())
            if pool is not None and sandbox.alive and not pool.retired and not surplus:
                _hand_on(pool, sandbox)
            else:
                if pool is not None:
                    pool.size -= 1
                    _hand_on(pool, None)         # a queued caller may start a sandbox in its place
                self._total -= 1
                asyncio.create_task(sandbox.kill())
            self._changed.notify_all()

    async def _evict_one_idle(self) -> None:
        """Called with the lock held: stop the least recently used idle sandbox on the node."""
        candidates = [(sandbox.last_used, pool, sandbox) for pool in self._pools.values() for sandbox in pool.idle]
        if not candidates:
            return
        _, pool, sandbox = min(candidates, key=lambda item: item[0])
        pool.idle.remove(sandbox)
        pool.size -= 1
        self._total -= 1
        await sandbox.kill()

    async def _retire_stale(self, name: str) -> None:
        """A deploy or alias change: idle sandboxes of versions nothing points at any more are stopped."""
        self._prefetching.add(asyncio.create_task(self._prefetch(name)))
        self._prefetching = {task for task in self._prefetching if not task.done()}
        latest = self._catalog.latest(name)
        wanted = {_pool_key(latest)} if latest else set()
        wanted |= {(name, number, 0) for number in self._catalog.aliases(name).values() if number}
        async with self._changed:
            for key, pool in list(self._pools.items()):
                if key[0] != name or key in wanted:
                    continue
                pool.retired = True
                while pool.idle:
                    sandbox = pool.idle.pop()
                    pool.size -= 1
                    self._total -= 1
                    await sandbox.kill()
                if pool.size == 0:
                    pool.wake_all()             # they start a sandbox in the pool that replaces this one
                    del self._pools[key]
            self._changed.notify_all()

    async def _reap_idle(self) -> None:
        idle_s = self._config.sandbox.idle_s
        while True:
            await asyncio.sleep(min(idle_s / 2, 5.0))
            cutoff = time.monotonic() - idle_s
            async with self._changed:
                for pool in self._pools.values():
                    for sandbox in [s for s in pool.idle if s.last_used < cutoff or not s.alive]:
                        pool.idle.remove(sandbox)
                        pool.size -= 1
                        self._total -= 1
                        await sandbox.kill()
                self._changed.notify_all()


async def _wait_for(pool: _Pool, waiter: _Waiter) -> SandboxProcess | None:
    """The sandbox handed to `waiter` by _release; None to look again (see _watch)."""
    try:
        return await waiter.future
    except asyncio.CancelledError:            # the caller went away
        future = waiter.future
        if future.done() and not future.cancelled():
            _hand_on(pool, future.result())   # handed over just then: to the next caller
        raise


def _hand_on(pool: _Pool, sandbox: SandboxProcess | None) -> None:
    """A free sandbox goes to the longest-waiting caller, or back to the idle list. None wakes that caller
    to look again (a sandbox was stopped)."""
    pool.last_freed = time.monotonic()
    while pool.waiters:
        future = pool.waiters.popleft().future
        if not future.done():
            future.set_result(sandbox)
            return
    if sandbox is not None:
        pool.idle.append(sandbox)


def _watch(pool: _Pool) -> None:
    """While callers are queued: wake those past their acquire deadline, and, when no sandbox has come free
    for a while (see _Pool.stalled_for), the longest-waiting one that may start a sandbox, to look again."""
    now = time.monotonic()
    live = [waiter for waiter in pool.waiters if not waiter.future.done()]
    pool.waiters.clear()
    stalled = bool(live) and now - max(pool.last_freed, live[0].queued) >= pool.stalled_for()
    for waiter in live:
        if now >= waiter.give_up_at:
            waiter.future.set_result(None)
        elif stalled and waiter.watch_stall:
            waiter.future.set_result(None)
            stalled = False
            pool.last_freed = now             # one new sandbox per stall period
        else:
            pool.waiters.append(waiter)
    if not pool.waiters:
        pool.watchdog = None
        return
    next_deadline = min(waiter.give_up_at for waiter in pool.waiters)
    pool.watchdog = asyncio.get_running_loop().call_later(
        max(0.001, min(pool.stalled_for(), next_deadline - now)), _watch, pool)


def _pool_key(version: Version) -> tuple[str, int, int]:
    """A pool serves one content under one label: $LATEST's revision, or a published number (revision 0)."""
    return (version.function, version.number, version.revision if version.is_latest else 0)


def _platform_lines(spec: FunctionSpec, executed_version: str, request_id: str, outcome: Outcome, *, logs: str,
                    init_logs: str, duration_ms: float, init_ms: float | None, memory_mb: int) -> str:
    """An invocation's log as Lambda writes it: START, the function's lines, END and REPORT; with the JSON log
    format, `platform.start` and `platform.report` records instead (left out below `system_log_level` INFO)."""
    if logs and not logs.endswith("\n"):
        logs += "\n"
    if init_logs and not init_logs.endswith("\n"):
        init_logs += "\n"
    billed = max(1, math.ceil(duration_ms))
    if spec.logging.is_json:
        if not spec.logging.system_lines:
            return init_logs + logs
        metrics = {"durationMs": round(duration_ms, 3), "billedDurationMs": billed, "memorySizeMB": spec.memory_mb,
                   "maxMemoryUsedMB": memory_mb}
        if init_ms is not None:
            metrics["initDurationMs"] = round(init_ms, 3)
        status = "success" if outcome is Outcome.SUCCESS else "timeout" if outcome is Outcome.TIMEOUT else "error"
        start = {"time": _now_iso(), "type": "platform.start",
                 "record": {"requestId": request_id, "version": executed_version}}
        done = {"time": _now_iso(), "type": "platform.report",
                "record": {"requestId": request_id, "metrics": metrics, "status": status}}
        return f"{init_logs}{orjson.dumps(start).decode()}\n{logs}{orjson.dumps(done).decode()}\n"
    report = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed} ms\t"
              f"Memory Size: {spec.memory_mb} MB\tMax Memory Used: {memory_mb} MB\t")
    if init_ms is not None:
        report += f"Init Duration: {init_ms:.2f} ms\t"
    if outcome is Outcome.TIMEOUT:
        report += "Status: timeout"
    return (f"{init_logs}START RequestId: {request_id} Version: {executed_version}\n{logs}"
            f"END RequestId: {request_id}\n{report}\n")


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
