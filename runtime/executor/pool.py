"""Pool scheduling: which sandbox runs an invocation on this node.

Each function version has a pool of warm sandboxes; an invocation takes an idle one or starts one, one
invocation per sandbox at a time. Limits: `max_per_function` per version, `max_per_node` in all (the least
recently used idle sandbox of any version makes room), and a CPU-bound handler gets two sandboxes per CPU
before callers queue for the next one freed. Busy after `acquire_timeout_s`. Sandboxes that died, that are
one too many, whose version was retired or that sat idle for `idle_s` are stopped. How a sandbox is started
is the caller's (`spawn`): the pools know sandboxes only as `PooledSandbox`, so tests run them with a stub.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

from ..config import SandboxConfig
from ..functions.catalog import Version
from ..shutdown import in_background
from .process import InitFailed

CPU_BOUND_SHARE = 0.5
MIN_STALL_S = 0.1
_EWMA = 0.2       # weight of the newest sample in a pool's moving average

PoolKey = tuple[str, int, int]


class Busy(Exception):
    """No sandbox could be had on this node within the acquire timeout."""


class PooledSandbox(Protocol):
    """What the pools need of a sandbox (SandboxProcess has it)."""
    last_used: float                    # monotonic

    @property
    def alive(self) -> bool: ...

    async def kill(self) -> None: ...


S = TypeVar("S", bound=PooledSandbox)


def pool_key(version: Version) -> PoolKey:
    """A pool serves one content under one label: $LATEST's revision, or a published number (revision 0).
    On Lambda, $LATEST and a published version are separate environments, each told which it is
    (AWS_LAMBDA_FUNCTION_VERSION, the log stream), even while they have the same content."""
    return (version.function, version.number, version.revision if version.is_latest else 0)


@dataclass(eq=False, slots=True)
class _Waiter(Generic[S]):
    future: asyncio.Future[S | None]
    queued: float                       # monotonic
    give_up_at: float                   # the caller's acquire deadline
    watch_stall: bool                   # starts a sandbox of its own when none comes free for a while


@dataclass(eq=False)
class _Pool(Generic[S]):
    """The sandboxes of one function version on this node."""
    version: Version
    idle: list[S] = field(default_factory=list)
    size: int = 0                       # idle + busy + starting
    retired: bool = False
    last_init_error: dict[str, Any] | None = None
    # Callers queued for a busy sandbox, oldest first; None handed over means "look again".
    waiters: collections.deque[_Waiter[S]] = field(default_factory=collections.deque)
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


class Pools(Generic[S]):
    """The warm pools of every function version on this node. `cpu_sandboxes`: how many sandboxes a CPU-bound
    version gets, two per CPU they run on (one computes while the other's answer is on its way)."""

    def __init__(self, config: SandboxConfig, *, spawn: Callable[[Version], Awaitable[S]],
                 cpu_sandboxes: int) -> None:
        self._config = config
        self._spawn = spawn
        self._cpu_sandboxes = cpu_sandboxes
        self._pools: dict[PoolKey, _Pool[S]] = {}
        self._total = 0
        self._changed = asyncio.Condition()

    def state(self, name: str) -> dict[str, Any]:
        """This node's sandboxes of a function, and the last init error if its import failed."""
        pools = [pool for (function, _, _), pool in self._pools.items() if function == name]
        errors = [pool.last_init_error for pool in pools if pool.last_init_error]
        return {"sandboxes": sum(pool.size for pool in pools), "idle": sum(len(pool.idle) for pool in pools),
                "last_init_error": errors[-1] if errors else None}

    def queued(self, version: Version) -> bool:
        """Whether callers wait for a sandbox of `version` to come free."""
        pool = self._pools.get(pool_key(version))
        return pool is not None and bool(pool.waiters)

    async def acquire(self, version: Version) -> tuple[S, bool]:
        """A warm sandbox of `version` (False), or a new one (True, cold).

        When every sandbox of the version is busy, a new one starts, as Lambda does, unless the version is
        at max_per_function or its handler is CPU-bound and has two sandboxes per CPU already: then the
        caller queues for the next sandbox released, first come first served. Past that point more
        processes would only share the same CPUs, each invocation taking longer. A queued caller that
        sees no sandbox come free for a while (_Pool.stalled_for) starts one after all. Waits when the
        node is full; Busy after sandbox.acquire_timeout_s. Raises what `spawn` raises (InitFailed)."""
        key = pool_key(version)
        deadline = time.monotonic() + self._config.acquire_timeout_s
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
                        return sandbox, False
                    pool.size -= 1
                    self._total -= 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Busy(f"no free sandbox for {version.function} on this node")
                at_max = pool.size >= self._config.max_per_function
                queue = at_max or (not impatient and pool.size >= self._cpu_sandboxes and pool.cpu_bound())
                if not queue:
                    if self._total >= self._config.max_per_node:
                        await self._evict_one_idle()
                    if self._total < self._config.max_per_node:
                        pool.size += 1
                        self._total += 1
                        break
                    with contextlib.suppress(asyncio.TimeoutError):    # the node is full: wait for room
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    continue
                now = time.monotonic()
                waiter: _Waiter[S] = _Waiter(asyncio.get_running_loop().create_future(), now, now + remaining,
                                             not at_max)
                pool.waiters.append(waiter)
                if pool.watchdog is None:
                    pool.watchdog = asyncio.get_running_loop().call_later(min(pool.stalled_for(), remaining),
                                                                          _watch, pool)
            if (handed := await _wait_for(pool, waiter)) is not None:
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
        return sandbox, True

    async def release(self, version: Version, sandbox: S, reply: dict[str, Any] | None = None) -> None:
        """Hand the sandbox on, or stop it: it died, its version was retired, or it is one sandbox too many
        for a CPU-bound handler (a burst that came before the pool knew started one per caller).
        `reply`: the sandbox's answer header (its duration and CPU time), None when it gave none."""
        async with self._changed:
            pool = self._pools.get(pool_key(version))
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
                in_background(sandbox.kill())
            self._changed.notify_all()

    async def retire(self, name: str, wanted: set[PoolKey]) -> None:
        """A deploy or alias change: idle sandboxes of `name`'s versions not in `wanted` are stopped."""
        async with self._changed:
            for key, pool in list(self._pools.items()):
                if key[0] != name or key in wanted:
                    continue
                pool.retired = True
                while pool.idle:
                    await self._stop_idle(pool, pool.idle.pop())
                if pool.size == 0:
                    pool.wake_all()             # they start a sandbox in the pool that replaces this one
                    del self._pools[key]
            self._changed.notify_all()

    async def reap_idle(self) -> None:
        """Forever: stop the sandboxes idle for `idle_s` (and the dead ones)."""
        idle_s = self._config.idle_s
        while True:
            await asyncio.sleep(min(idle_s / 2, 5.0))
            await self.reap(time.monotonic() - idle_s)

    async def reap(self, cutoff: float) -> None:
        """Stop the idle sandboxes last used before `cutoff` (monotonic), and the dead ones."""
        async with self._changed:
            for pool in self._pools.values():
                for sandbox in [s for s in pool.idle if s.last_used < cutoff or not s.alive]:
                    pool.idle.remove(sandbox)
                    await self._stop_idle(pool, sandbox)
            self._changed.notify_all()

    async def stop(self) -> None:
        """Every queued caller looks again (and finds the pool retired); every idle sandbox is stopped."""
        for pool in self._pools.values():
            pool.retired = True
            pool.wake_all()
            while pool.idle:
                await pool.idle.pop().kill()

    async def _evict_one_idle(self) -> None:
        """Called with the lock held: stop the least recently used idle sandbox on the node."""
        candidates = [(sandbox.last_used, pool, sandbox) for pool in self._pools.values() for sandbox in pool.idle]
        if not candidates:
            return
        _, pool, sandbox = min(candidates, key=lambda item: item[0])
        pool.idle.remove(sandbox)
        await self._stop_idle(pool, sandbox)

    async def _stop_idle(self, pool: _Pool[S], sandbox: S) -> None:
        """Called with the lock held: stop a sandbox just taken off `pool`'s idle list."""
        pool.size -= 1
        self._total -= 1
        await sandbox.kill()


async def _wait_for(pool: _Pool[S], waiter: _Waiter[S]) -> S | None:
    """The sandbox handed to `waiter` by release; None to look again (see _watch)."""
    try:
        return await waiter.future
    except asyncio.CancelledError:            # the caller went away
        future = waiter.future
        if future.done() and not future.cancelled():
            _hand_on(pool, future.result())   # handed over just then: to the next caller
        raise


def _hand_on(pool: _Pool[S], sandbox: S | None) -> None:
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


def _watch(pool: _Pool[Any]) -> None:
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
