"""Pool scheduling (runtime.executor.pool) against stub sandboxes: which sandbox runs an invocation, in
milliseconds. The end-to-end tests (test_sync_invoke) prove the same with real processes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Coroutine

import pytest

from runtime.config import SandboxConfig
from runtime.executor.pool import Busy, Pools
from runtime.functions.catalog import Version
from runtime.functions.spec import FunctionSpec

from .stub_sandbox import StubLauncher, StubSandbox, success

pytestmark = pytest.mark.timeout(10)


def version(name: str = "fn", *, number: int = 0, revision: int = 1) -> Version:
    return Version(function=name, number=number, code_hash="c0de", spec=FunctionSpec(), created="",
                   revision=revision)


def make_pools(launcher: StubLauncher, *, cpu_sandboxes: int = 8, **sandbox: Any) -> Pools[StubSandbox]:
    return Pools(SandboxConfig(**sandbox), spawn=launcher.spawn, cpu_sandboxes=cpu_sandboxes)


async def call(pools: Pools[StubSandbox], of: Version, *, cpu_ms: float = 0.1) -> StubSandbox:
    """One invocation as the executor runs it: acquire, invoke, release with the answer's figures."""
    sandbox, _ = await pools.acquire(of)
    sandbox.answers = [success(duration_ms=1.0, cpu_ms=cpu_ms)]
    reply = await sandbox.invoke({"id": "r"}, b"{}", timeout_s=3.0, logs=[])
    await pools.release(of, sandbox, reply.header)
    return sandbox


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def settle() -> None:
    """Let every task that can run do so (for asserting that something did not happen), in no wall time."""
    for _ in range(20):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Let the loop run until `condition` holds (a deadline, never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def test_a_released_sandbox_is_reused_warm() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher)
        first, cold = await pools.acquire(version())
        assert cold
        await pools.release(version(), first, success().header)
        again, cold = await pools.acquire(version())
        assert again is first and not cold
        assert len(launcher.spawned) == 1
    run(scenario)


def test_each_sandbox_runs_one_invocation_at_a_time() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        launcher = StubLauncher(gate=gate)
        pools = make_pools(launcher)
        calls = [asyncio.create_task(call(pools, version())) for _ in range(5)]
        await until(lambda: sum(sandbox.running for sandbox in launcher.spawned) == 5)
        gate.set()
        await asyncio.gather(*calls)
        assert len(launcher.spawned) == 5
        assert all(sandbox.most_running == 1 for sandbox in launcher.spawned)
        assert pools.state("fn") == {"sandboxes": 5, "idle": 5, "last_init_error": None}
    run(scenario)


def test_at_max_per_function_callers_queue_first_come_first_served() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher, max_per_function=1)
        held, _ = await pools.acquire(version())
        assert not pools.queued(version())
        second = asyncio.create_task(pools.acquire(version()))
        await until(lambda: pools.state("fn")["sandboxes"] == 1 and not second.done())
        third = asyncio.create_task(pools.acquire(version()))
        await settle()
        assert pools.queued(version()) and not pools.queued(version("other"))
        await pools.release(version(), held, success().header)
        handed, cold = await second
        assert handed is held and not cold and not third.done()
        await pools.release(version(), handed, success().header)
        assert (await third)[0] is held
        assert not pools.queued(version())
        assert len(launcher.spawned) == 1
    run(scenario)


def test_no_free_sandbox_within_the_acquire_timeout_is_busy() -> None:
    async def scenario() -> None:
        pools = make_pools(StubLauncher(), max_per_function=1, acquire_timeout_s=0.05)
        await pools.acquire(version())
        started = time.monotonic()
        with pytest.raises(Busy):
            await pools.acquire(version())
        assert 0.04 <= time.monotonic() - started < 1.0
    run(scenario)


def test_a_full_node_stops_the_least_recently_used_idle_sandbox_of_another_version() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher, max_per_node=2)
        older = await call(pools, version("a"))
        newer = await call(pools, version("b"))
        newcomer, cold = await pools.acquire(version("c"))
        assert cold and older.killed and not newer.killed
        assert pools.state("a")["sandboxes"] == 0 and pools.state("b")["sandboxes"] == 1
        assert newcomer is launcher.spawned[-1]
    run(scenario)


def test_a_full_node_with_no_idle_sandbox_waits_for_room() -> None:
    async def scenario() -> None:
        pools = make_pools(StubLauncher(), max_per_node=1)
        busy, _ = await pools.acquire(version("a"))
        waiting = asyncio.create_task(pools.acquire(version("b")))
        await settle()
        assert not waiting.done()
        busy.dead = True
        await pools.release(version("a"), busy, None)
        sandbox, cold = await waiting
        assert cold and sandbox.version.function == "b"
    run(scenario)


def test_a_sandbox_that_died_is_stopped_and_replaced() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher)
        sandbox, _ = await pools.acquire(version())
        sandbox.answers.append(asyncio.TimeoutError())
        with pytest.raises(asyncio.TimeoutError):
            await sandbox.invoke({"id": "r"}, b"{}", timeout_s=1.0, logs=[])
        await pools.release(version(), sandbox, None)
        assert pools.state("fn")["sandboxes"] == 0
        replacement, cold = await pools.acquire(version())
        assert cold and replacement is not sandbox and len(launcher.spawned) == 2
    run(scenario)


def test_an_idle_sandbox_that_died_meanwhile_is_skipped() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher)
        idle = await call(pools, version())
        idle.dead = True
        fresh, cold = await pools.acquire(version())
        assert cold and fresh is not idle
        assert pools.state("fn")["sandboxes"] == 1
    run(scenario)


def test_a_queued_caller_starts_a_sandbox_in_place_of_one_that_died() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher, max_per_function=1)
        held, _ = await pools.acquire(version())
        queued = asyncio.create_task(pools.acquire(version()))
        await settle()
        held.dead = True
        await pools.release(version(), held, None)
        sandbox, cold = await queued
        assert cold and sandbox is launcher.spawned[1]
        await until(lambda: held.killed)
    run(scenario)


def test_retiring_a_version_stops_its_idle_sandboxes_and_its_busy_ones_when_released() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher)
        old, new = version(revision=1), version(revision=2)
        busy, _ = await pools.acquire(old)
        idle = await call(pools, old)
        kept = await call(pools, new)
        other = await call(pools, version("other", revision=1))
        await pools.retire("fn", wanted={("fn", 0, 2)})
        assert idle.killed and not busy.killed and not kept.killed and not other.killed
        await pools.release(old, busy, success().header)
        await until(lambda: busy.killed)
        assert pools.state("fn") == {"sandboxes": 1, "idle": 1, "last_init_error": None}
    run(scenario)


def test_idle_sandboxes_past_the_cutoff_are_reaped() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher)
        stale = await call(pools, version("a"))
        fresh = await call(pools, version("b"))
        stale.last_used = time.monotonic() - 600
        await pools.reap(time.monotonic() - 300)
        assert stale.killed and not fresh.killed
        assert pools.state("a")["sandboxes"] == 0 and pools.state("b")["sandboxes"] == 1
    run(scenario)


def test_latest_and_a_published_version_have_pools_of_their_own() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher)
        latest = await call(pools, version(number=0, revision=3))
        published = await call(pools, version(number=1, revision=3))
        assert latest is not published
        assert (await pools.acquire(version(number=1, revision=3)))[0] is published
        assert (await pools.acquire(version(number=0, revision=3)))[0] is latest
        assert pools.state("fn")["sandboxes"] == 2
    run(scenario)


def test_an_init_error_is_kept_for_the_function_state_and_frees_the_slot() -> None:
    async def scenario() -> None:
        error = {"errorType": "Runtime.ImportModuleError", "errorMessage": "No module named 'x'", "stackTrace": []}
        launcher = StubLauncher(init_errors=[error])
        pools = make_pools(launcher, max_per_function=1)
        with pytest.raises(Exception) as raised:
            await pools.acquire(version())
        assert getattr(raised.value, "error", None) == error
        assert pools.state("fn") == {"sandboxes": 0, "idle": 0, "last_init_error": error}
        sandbox, cold = await pools.acquire(version())     # the fix deployed: the next start works
        assert cold and pools.state("fn")["last_init_error"] is None
    run(scenario)


def test_a_cpu_bound_handler_gets_two_sandboxes_per_cpu_then_callers_queue() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher, cpu_sandboxes=2)
        for _ in range(5):      # the pool learns the handler computes its whole duration
            await call(pools, version(), cpu_ms=1.0)
        first, _ = await pools.acquire(version())
        second, _ = await pools.acquire(version())
        queued = asyncio.create_task(pools.acquire(version()))
        await settle()
        assert not queued.done() and len(launcher.spawned) == 2
        await pools.release(version(), first, success(cpu_ms=1.0).header)
        assert (await queued)[0] is first
    run(scenario)


def test_a_waiting_handler_gets_a_sandbox_per_caller() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher, cpu_sandboxes=2)
        for _ in range(5):      # the handler waits on I/O: a tenth of its duration on a CPU
            await call(pools, version(), cpu_ms=0.1)
        held = [await pools.acquire(version()) for _ in range(4)]
        assert len({id(sandbox) for sandbox, _ in held}) == 4 and len(launcher.spawned) == 4
    run(scenario)


def test_a_queued_cpu_bound_caller_starts_its_own_sandbox_when_none_comes_free() -> None:
    async def scenario() -> None:
        launcher = StubLauncher()
        pools = make_pools(launcher, cpu_sandboxes=1)
        for _ in range(5):
            await call(pools, version(), cpu_ms=1.0)
        await pools.acquire(version())
        started = time.monotonic()
        sandbox, cold = await pools.acquire(version())      # after the stall period (0.1 s at least)
        assert cold and sandbox is launcher.spawned[-1] and len(launcher.spawned) == 2
        assert time.monotonic() - started >= 0.09
    run(scenario)
