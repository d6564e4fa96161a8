"""The one boundary (runtime.executor.Executor.invoke) over stub sandboxes: what reaches the sandbox, cold and
warm starts, timeouts and crashes, reserved concurrency; the catalog, leases and logs in a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path
from typing import AsyncIterator, cast

import orjson
import pytest
from redis.asyncio import Redis

from runtime.config import Config
from runtime.executor import Executor, Outcome
from runtime.executor.concurrency import ConcurrencyLimiter
from runtime.executor.launcher import Launcher
from runtime.executor.process import SandboxGone
from runtime.functions.catalog import Catalog, Target
from runtime.functions.package import check_zip, pack_folder
from runtime.observability.logs import LogSink

from .stub_sandbox import StubLauncher, success

pytestmark = pytest.mark.timeout(20)


@contextlib.asynccontextmanager
async def executor_of(tmp_path: Path, redis_url: str, launcher: StubLauncher,
                      function_yaml: str = "") -> AsyncIterator[tuple[Executor, Target]]:
    """An executor of one deployed function `fn` whose sandboxes `launcher` makes."""
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "handler.py").write_text("def handler(event, context):\n    return event\n")
    (folder / "function.yaml").write_text(textwrap.dedent(function_yaml))
    config = Config.model_validate({"redis_url": redis_url, "data_dir": str(tmp_path / "data"),
                                    "account_id": "123456789012"})
    redis = Redis.from_url(redis_url)
    catalog = Catalog(redis, data_dir=config.data_dir)
    await catalog.deploy("fn", check_zip(pack_folder(folder)))
    # The catalog read once, not started: its listener's stop can hang when it comes right after its start
    # (the pub/sub connection's close, when cancelled while it subscribes).
    await catalog.reload()
    logs = LogSink(redis, keep_per_function=10)
    logs.start()
    executor = Executor(config, catalog=catalog, limiter=ConcurrencyLimiter(redis), logs=logs,
                        launcher=cast(Launcher, launcher))      # the stub has the Launcher's interface
    executor.start()
    try:
        yield executor, await catalog.resolve("fn")
    finally:
        await executor.stop()
        await logs.stop()
        await redis.aclose()


def test_a_cold_start_then_a_warm_one_on_the_same_sandbox(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        launcher = StubLauncher(answers=[success(b'{"n":1}'), success(b'{"n":2}')])
        async with executor_of(tmp_path, redis_url, launcher) as (executor, target):
            cold = await executor.invoke(target, b'{"a":1}', request_id="req-1", attempt=2, trace_id="Root=1-x")
            warm = await executor.invoke(target, b"{}", request_id="req-2")
        assert cold.outcome is Outcome.SUCCESS and cold.payload == b'{"n":1}' and cold.init_ms == 5.0
        assert "Init Duration: 5.00 ms" in cold.logs and cold.logs.startswith("START RequestId: req-1 Version: $LATEST")
        assert warm.payload == b'{"n":2}' and warm.init_ms is None and "Init Duration" not in warm.logs
        [sandbox] = launcher.spawned
        first = sandbox.calls[0]
        assert (first["id"], first["version"], first["attempt"], first["trace_id"]) == \
            ("req-1", "$LATEST", 2, "Root=1-x")
        assert first["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:fn"
    asyncio.run(scenario())


def test_a_timeout_answers_sandbox_timedout_and_the_next_call_gets_a_new_sandbox(tmp_path: Path,
                                                                                redis_url: str) -> None:
    async def scenario() -> None:
        launcher = StubLauncher(answers=[asyncio.TimeoutError()])
        async with executor_of(tmp_path, redis_url, launcher, "timeout: 2\n") as (executor, target):
            timed_out = await executor.invoke(target, b"{}", request_id="req-1")
            after = await executor.invoke(target, b"{}")
        assert timed_out.outcome is Outcome.TIMEOUT and timed_out.error_type == "Sandbox.Timedout"
        assert timed_out.duration_ms == 2000.0 and timed_out.logs.rstrip().endswith("Status: timeout")
        assert after.ok and after.init_ms is not None
        assert len(launcher.spawned) == 2 and launcher.spawned[0].killed
    asyncio.run(scenario())


def test_a_sandbox_that_exits_is_a_runtime_exit_error(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        launcher = StubLauncher(answers=[SandboxGone("Runtime exited with error: exit status 3")])
        async with executor_of(tmp_path, redis_url, launcher) as (executor, target):
            crashed = await executor.invoke(target, b"{}", request_id="req-1")
        assert crashed.outcome is Outcome.CRASH and crashed.error == {
            "errorType": "Runtime.ExitError", "requestId": "req-1",
            "errorMessage": "RequestId: req-1 Error: Runtime exited with error: exit status 3"}
    asyncio.run(scenario())


def test_an_init_error_is_the_answer_and_the_functions_state(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        error = {"errorType": "Runtime.HandlerNotFound", "errorMessage": "Handler 'h' missing", "stackTrace": []}
        launcher = StubLauncher(init_errors=[error])
        async with executor_of(tmp_path, redis_url, launcher) as (executor, target):
            failed = await executor.invoke(target, b"{}", request_id="req-1")
            assert executor.state("fn") == {"sandboxes": 0, "idle": 0, "last_init_error": error}
        assert failed.outcome is Outcome.INIT_ERROR and orjson.loads(failed.payload) == {**error, "requestId": "req-1"}
        assert failed.logs.startswith("init failed\nSTART RequestId: req-1")
    asyncio.run(scenario())


def test_past_reserved_concurrency_an_invocation_is_throttled_without_a_sandbox(tmp_path: Path,
                                                                                redis_url: str) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        launcher = StubLauncher(gate=gate)
        async with executor_of(tmp_path, redis_url, launcher, "reserved_concurrency: 1\n") as (executor, target):
            running = asyncio.create_task(executor.invoke(target, b"{}"))
            while not (launcher.spawned and launcher.spawned[0].running):
                await asyncio.sleep(0.001)
            throttled = await executor.invoke(target, b"{}")
            gate.set()
            assert (await running).ok
            again = await executor.invoke(target, b"{}")
        assert throttled.outcome is Outcome.THROTTLED and throttled.payload == b"null" and throttled.logs == ""
        assert again.ok and len(launcher.spawned) == 1
    asyncio.run(scenario())
