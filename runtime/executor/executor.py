"""The one boundary where user code runs: `Executor.invoke(target, payload, ...) -> InvocationResult`.

Every way in (HTTP, async job, Kafka batch, cron fire) ends here. The executor is the facade the roles use:
it takes a lease of reserved concurrency, a sandbox from this node's pools (pool), runs the invocation in it
with its timeout, turns what came of it into Lambda's outcome (framing), answers it and then records it once
(_finish).
Sandboxes are made by the launcher (code preparation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ..config import Config
from ..events.trace import new_request_id, trace_header
from ..functions.catalog import LATEST, Catalog, Target, Version
from ..functions.package import Package
from ..observability import metrics, setup
from ..observability.logs import LogSink
from ..observability.stats import StatsSink
from . import framing
from .concurrency import ConcurrencyLimiter
from .cpus import all_cpus, sandbox_cpus
from .framing import Call, Cold, Ending
from .launcher import Launcher
from .pool import Pools, pool_key
from .process import InitFailed, SandboxGone, SandboxProcess
from .result import InvocationResult, Outcome

log = logging.getLogger(__name__)
invocations = logging.getLogger(setup.INVOCATIONS)     # a line per invocation, written in batches (setup.py)


class Executor:
    """`launcher`: what makes this node's sandboxes (the default starts real ones; tests give a stub, see
    tests/stub_sandbox.py)."""

    def __init__(self, config: Config, *, catalog: Catalog, limiter: ConcurrencyLimiter, logs: LogSink,
                 stats: StatsSink | None = None, launcher: Launcher | None = None) -> None:
        self._config = config
        self._catalog = catalog
        self._limiter = limiter
        self._logs = logs
        self._stats = stats
        self._launcher = launcher or Launcher(config, catalog=catalog)
        self.isolation = self._launcher.isolation
        self._sandbox_cpus = sandbox_cpus(config)
        # With one CPU, a poll for the answer would only hold the CPU the sandbox needs to answer.
        self._poll_s = config.sandbox.poll_us / 1e6 if len(all_cpus()) >= 2 else 0.0
        # A CPU-bound version gets two sandboxes per CPU they run on; callers queue for them past that.
        self._pools: Pools[SandboxProcess] = Pools(config.sandbox, spawn=self._spawn,
                                                   cpu_sandboxes=2 * len(self._sandbox_cpus or all_cpus()))
        self._reaper: asyncio.Task[None] | None = None
        self._prefetching: set[asyncio.Task[None]] = set()
        self._unrecorded: list[tuple[Call, Ending, str]] = []     # answered, not yet recorded (_finish)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._catalog.on_change(self._retire_stale)
        self._reaper = asyncio.create_task(self._pools.reap_idle())
        self._launcher.start()

    async def stop(self) -> None:
        self._record_finished()
        await self._launcher.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self._pools.stop()

    def state(self, name: str) -> dict[str, Any]:
        """This node's sandboxes of a function, and the last init error if its import failed."""
        return self._pools.state(name)

    async def trial_init(self, name: str, package: Package) -> dict[str, Any] | None:
        """Unpack, install and import a package in a throw-away sandbox before it becomes a version:
        None when the handler imports, else Lambda's init error (with the init logs). Raises DepsError."""
        return await self._launcher.trial_init(name, package)

    def arn(self, function: str, qualifier: str | None = None, *, named: bool = False) -> str:
        """The function's ARN, with its qualifier; $LATEST only where the caller wrote it, as Lambda's
        invoked_function_arn."""
        base = f"arn:aws:lambda:{self._config.region}:{self._config.account_id}:function:{function}"
        return f"{base}:{qualifier}" if qualifier and (qualifier != LATEST or named) else base

    # -- the boundary ----------------------------------------------------------------------

    async def invoke(self, target: Target, payload: bytes, *, request_id: str | None = None,
                     trigger: str = "sync", attempt: int = 1, client_context: Any = None,
                     trace_id: str | None = None) -> InvocationResult:
        """Run one invocation. `trace_id`: its X-Ray header (events.trace); a new unsampled one when None.
        Raises Busy when no sandbox could be had on this node."""
        call = Call(target=target, request_id=request_id or new_request_id(), trigger=trigger, attempt=attempt)
        version = target.version
        lease = None
        # Reserved concurrency is the function's, whichever version runs: $LATEST's configuration says it.
        reserved = (self._catalog.latest(version.function) or version).spec.reserved_concurrency
        if reserved is not None:
            lease = await self._limiter.acquire(version.function, limit=reserved, timeout_s=version.spec.timeout_s)
            if lease is None:
                return self._finish(call, framing.throttled())
        running = metrics.child(metrics.CONCURRENT, version.function)
        running.inc()
        try:
            return self._finish(call, await self._run(call, payload, client_context=client_context,
                                                      trace_id=trace_id or trace_header()))
        finally:
            running.dec()
            if lease is not None:
                await self._limiter.release(version.function, lease)

    async def _run(self, call: Call, payload: bytes, *, client_context: Any, trace_id: str) -> Ending:
        target = call.target
        version = target.version
        spec = version.spec
        try:
            sandbox, cold_start = await self._pools.acquire(version)
        except InitFailed as failure:
            return framing.init_failed(call, failure)
        header = {"id": call.request_id, "deadline_ms": int(time.time() * 1000 + spec.timeout_s * 1000),
                  "arn": self.arn(version.function, target.qualifier, named=target.named),
                  "version": target.executed_version,
                  "attempt": call.attempt, "client_context": client_context, "trace_id": trace_id}
        cold = Cold(init_logs=sandbox.init_logs, init_ms=sandbox.init_ms) if cold_start else framing.WARM
        logs: list[str] = []
        started = time.perf_counter()
        reply = None
        try:
            # No poll while callers queue for this version's sandboxes: the loop has their work to do meanwhile.
            poll_s = 0.0 if self._pools.queued(version) else self._poll_s
            reply = await sandbox.invoke(header, payload, timeout_s=spec.timeout_s, logs=logs, poll_s=poll_s)
            # A process of its tree was killed for memory (the sandbox is then not reused): the invocation fails.
            out_of_memory = sandbox.out_of_memory()
        except asyncio.TimeoutError:
            return framing.timed_out(call, timeout_s=spec.timeout_s, logs=logs, cold=cold)
        except SandboxGone as gone:
            return framing.crashed(call, gone, logs=logs, duration_ms=(time.perf_counter() - started) * 1000,
                                   cold=cold)
        finally:
            await self._pools.release(version, sandbox, None if reply is None else reply.header)
        return framing.answered(call, reply, out_of_memory=out_of_memory, cold=cold,
                                payload_limit_bytes=self._config.gateway.sync_payload_limit_bytes)

    def _finish(self, call: Call, ending: Ending) -> InvocationResult:
        """Answer what one invocation came to; its record (log, stats, metrics, a log line) is written once the
        caller has its answer (_record_finished)."""
        version = call.target.version
        logs = ending.logs
        if ending.outcome is not Outcome.THROTTLED:
            logs = framing.platform_lines(call, ending)
        if not self._unrecorded:
            asyncio.get_running_loop().call_soon(self._record_finished)
        self._unrecorded.append((call, ending, logs))
        return InvocationResult(request_id=call.request_id, function=version.function, version=version.label,
                                executed_version=call.target.executed_version, outcome=ending.outcome,
                                payload=ending.payload, logs=logs, duration_ms=ending.duration_ms,
                                init_ms=ending.init_ms, max_memory_mb=ending.memory_mb)

    def _record_finished(self) -> None:
        """Record the invocations finished since the loop last came here. It runs before the loop next reads a
        socket (call_soon), so no later request sees them unrecorded; the answers went first: a warm call's
        bookkeeping (about a fifth of the gateway's CPU per call) is no longer between the sandbox and its caller,
        and done for several calls at a time it costs less."""
        finished, self._unrecorded = self._unrecorded, []
        for call, ending, logs in finished:
            try:
                self._record(call, ending, logs)
            except Exception:       # a record lost must not lose the rest, nor reach the event loop
                log.exception("could not record invocation %s", call.request_id)

    def _record(self, call: Call, ending: Ending, logs: str) -> None:
        version = call.target.version
        outcome, duration_ms = ending.outcome, ending.duration_ms
        if outcome is not Outcome.THROTTLED:
            self._logs.record(function=version.function, version=version.label, request_id=call.request_id,
                              text=logs)
        if self._stats is not None:
            self._stats.record(function=version.function, ok=outcome is Outcome.SUCCESS,
                               throttled=outcome is Outcome.THROTTLED, duration_ms=duration_ms)
        metrics.observe_invocation(function=version.function, version=version.label, trigger=call.trigger,
                                   outcome=outcome.value, duration_s=duration_ms / 1000,
                                   init_s=None if ending.init_ms is None else ending.init_ms / 1000)
        if invocations.isEnabledFor(logging.INFO):
            setup.log_invocation(outcome.value, {
                "function": version.function, "version": version.label, "request_id": call.request_id,
                "trigger": call.trigger, "attempt": call.attempt, "duration_ms": round(duration_ms, 2),
                "logs": logs})

    # -- sandboxes -------------------------------------------------------------------------

    async def _spawn(self, version: Version) -> SandboxProcess:
        return await self._launcher.spawn(version, cpus=self._sandbox_cpus)

    async def _retire_stale(self, name: str) -> None:
        """A deploy or alias change: idle sandboxes of versions nothing points at any more are stopped."""
        self._prefetching.add(asyncio.create_task(self._launcher.prefetch(name)))
        self._prefetching = {task for task in self._prefetching if not task.done()}
        latest = self._catalog.latest(name)
        wanted = {pool_key(latest)} if latest else set()
        wanted |= {(name, number, 0) for number in self._catalog.aliases(name).values() if number}
        await self._pools.retire(name, wanted)
