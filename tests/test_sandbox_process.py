"""The host's handle on a real sandbox process (runtime.executor.process.SandboxProcess), without a jail: its
answers read whole whether they are polled for first (sandbox.poll_us) or read by the event loop alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import AsyncIterator

import orjson
import pytest

from runtime.executor.process import BOOTSTRAP, SandboxGone, SandboxProcess, _cpu_contended, bootstrap_argv
from runtime.jail import Launch

pytestmark = pytest.mark.timeout(30)

HANDLER = textwrap.dedent("""
    import os
    import time

    def handler(event, context):
        if event.get("exit"):
            os._exit(3)
        time.sleep(event.get("sleep", 0))
        for index in range(event["lines"]):
            print(f"line {index} " + "x" * 100)
        return {"echo": event["tag"], "pad": "y" * event["pad"]}
""")


@contextlib.asynccontextmanager
async def _sandboxes(*folders: Path) -> AsyncIterator[list[SandboxProcess]]:
    """A started sandbox of HANDLER in each folder, its init done; all killed at the end."""
    started: list[SandboxProcess] = []
    try:
        for folder in folders:
            folder.mkdir(exist_ok=True)
            (folder / "handler.py").write_text(HANDLER)
            sandbox = await SandboxProcess.start(Launch(
                command=[sys.executable, *bootstrap_argv(str(BOOTSTRAP))], cwd=str(folder), env={},
                task_root=str(folder), path=[], cgroup=None))
            started.append(sandbox)
            await sandbox.init(handler="handler.handler", memory_mb=256, env={})
        yield started
    finally:
        for sandbox in started:
            await sandbox.kill()


def _header(request_id: str) -> dict[str, object]:
    return {"id": request_id, "deadline_ms": 2**52, "arn": "arn:aws:lambda:x", "version": "$LATEST"}


async def _invoke(sandbox: SandboxProcess, event: dict[str, object], poll_s: float) -> tuple[dict[str, object], str]:
    reply = await sandbox.invoke(_header(f"req-{event['tag']}"), orjson.dumps(event), timeout_s=10, logs=[],
                                 poll_s=poll_s)
    assert reply.header["ok"], reply.header
    return orjson.loads(reply.payload), reply.logs


@pytest.mark.parametrize("poll_s", [0.0, 0.0003, 0.05], ids=["loop-only", "default-poll", "long-poll"])
def test_answers_and_their_logs_arrive_whole(tmp_path: Path, poll_s: float) -> None:
    async def scenario() -> None:
        async with _sandboxes(tmp_path) as [sandbox]:
            # a small answer, then one far larger than a pipe holds, with log lines before it (several frames)
            for tag, lines, pad in ((1, 0, 10), (2, 2000, 300_000), (3, 1, 10)):
                result, logs = await _invoke(sandbox, {"tag": tag, "lines": lines, "pad": pad}, poll_s)
                assert result == {"echo": tag, "pad": "y" * pad}
                assert logs.splitlines() == [f"line {index} " + "x" * 100 for index in range(lines)]
    asyncio.run(scenario())


def test_a_polling_sandbox_answers_the_next_invocation_within_or_after_its_poll(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _sandboxes(tmp_path) as [sandbox]:
            for tag in range(5):          # each comes while the sandbox still polls for it
                assert (await _invoke(sandbox, {"tag": tag, "lines": 1, "pad": 1}, 0.2))[0]["echo"] == tag
            await asyncio.sleep(0.3)      # this one after it gave up and sleeps in its read
            assert (await _invoke(sandbox, {"tag": 9, "lines": 0, "pad": 1}, 0.2))[0]["echo"] == 9
    asyncio.run(scenario())


def test_invocations_awaited_together_each_get_their_own_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _sandboxes(*(tmp_path / str(index) for index in range(3))) as sandboxes:
            for _ in range(20):
                answers = await asyncio.gather(*(_invoke(sandbox, {"tag": index, "lines": 1, "pad": 1}, 0.05)
                                                 for index, sandbox in enumerate(sandboxes)))
                assert [result["echo"] for result, _ in answers] == [0, 1, 2]
    asyncio.run(scenario())


def test_a_sandbox_that_exits_while_polled_for_is_gone_with_its_exit_status(tmp_path: Path) -> None:
    async def scenario() -> str:
        async with _sandboxes(tmp_path) as [sandbox]:
            with pytest.raises(SandboxGone) as gone:
                await sandbox.invoke(_header("req-x"), orjson.dumps({"exit": True}), timeout_s=10, logs=[],
                                     poll_s=0.05)
            return gone.value.reason
    assert asyncio.run(scenario()) == "Runtime exited with error: exit status 3"


async def _timed_out_after(sandbox: SandboxProcess, timeout_s: float) -> float:
    """Invoke a handler that sleeps far past `timeout_s`: the seconds until the wait raised TimeoutError."""
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await sandbox.invoke(_header("req-slow"), orjson.dumps({"tag": 0, "lines": 0, "pad": 0, "sleep": 25}),
                             timeout_s=timeout_s, logs=[])
    assert not sandbox.alive            # killed at its deadline, never reused
    return time.monotonic() - started


def test_each_invocation_ends_at_its_own_deadline_whatever_the_one_before_had(tmp_path: Path) -> None:
    async def scenario() -> None:
        fast = {"tag": 1, "lines": 0, "pad": 0}
        async with _sandboxes(tmp_path / "a", tmp_path / "b") as [shorter_first, longer_first]:
            # a call with a short deadline answers; the next, with a longer one, still gets all of it
            await shorter_first.invoke(_header("req-1"), orjson.dumps(fast), timeout_s=0.3, logs=[])
            assert await _timed_out_after(shorter_first, 1.0) >= 1.0
            # a call with a long deadline answers; the next, with a short one, is not kept until the long one
            await longer_first.invoke(_header("req-2"), orjson.dumps(fast), timeout_s=10.0, logs=[])
            assert 0.3 <= await _timed_out_after(longer_first, 0.3) < 10.0
    asyncio.run(scenario())


def test_a_caller_cancelled_while_its_sandbox_runs_is_cancelled_not_timed_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _sandboxes(tmp_path) as [sandbox]:
            call = asyncio.create_task(sandbox.invoke(
                _header("req-c"), orjson.dumps({"tag": 0, "lines": 0, "pad": 0, "sleep": 25}), timeout_s=10.0,
                logs=[]))
            await asyncio.sleep(0)        # the call is sent, and waits for its answer
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert not sandbox.alive      # a call given up on does not leave its sandbox to the next
    asyncio.run(scenario())


def test_a_thread_that_shares_its_cpu_with_a_busy_process_stops_polling_until_it_has_a_cpu_again() -> None:
    """The guard of both polls (_cpu_contended): this thread, pinned to one CPU beside a CPU-bound process, waits
    for that CPU half of the time, and finds itself contended; once the process ends, it is not."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {cpu})
        os.sched_setaffinity(0, {cpu})
        deadline = time.monotonic() + 10
        while not _cpu_contended():       # computing (runnable) all along, as a poll is
            assert time.monotonic() < deadline, "never contended beside a CPU-bound process on its CPU"
    finally:
        busy.kill()
        busy.wait()
        os.sched_setaffinity(0, before)
    deadline = time.monotonic() + 10
    while _cpu_contended():
        assert time.monotonic() < deadline, "still contended with a CPU to itself"
        time.sleep(0.15)                # a window of waiting for nothing but time


_UVLOOP_LIFECYCLE = textwrap.dedent("""
    import sys
    from pathlib import Path

    import orjson
    import uvloop

    from runtime.executor.process import BOOTSTRAP, SandboxGone, SandboxProcess, bootstrap_argv
    from runtime.jail import Launch

    async def main(folder):
        for crashes in (False, True):
            sandbox = await SandboxProcess.start(Launch(
                command=[sys.executable, *bootstrap_argv(str(BOOTSTRAP))], cwd=str(folder), env={},
                task_root=str(folder), path=[], cgroup=None))
            await sandbox.init(handler="handler.handler", memory_mb=256, env={})
            header = {"id": "req-1", "deadline_ms": 2**52, "arn": "arn:aws:lambda:x", "version": "$LATEST"}
            event = {"tag": 1, "lines": 1, "pad": 1, "exit": crashes}
            try:
                reply = await sandbox.invoke(header, orjson.dumps(event), timeout_s=10, logs=[])
                print("answered", orjson.loads(reply.payload)["echo"])
            except SandboxGone as gone:
                print("gone", gone.reason)
            await sandbox.kill()

    uvloop.run(main(Path(sys.argv[1])))
""")


def test_under_uvloop_no_pipe_descriptor_is_closed_twice(tmp_path: Path) -> None:
    """The gateway's loop is uvloop, whose pipe transports close their descriptor and then their file object:
    a second close(2) of a number that another thread may have been given meanwhile (it closed a cleanup thread's
    folder under its shutil.rmtree). Through a sandbox's life, answered and crashed, and killed: every close of
    the loop's thread finds the descriptor open."""
    assert shutil.which("strace"), "this test needs strace: apt-get install strace (scripts/test.sh installs it)"
    (tmp_path / "handler.py").write_text(HANDLER)
    trace = tmp_path / "close.trace"
    run = subprocess.run(["strace", "-qq", "-e", "trace=close", "-e", "signal=none", "-o", str(trace),
                          sys.executable, "-c", _UVLOOP_LIFECYCLE, str(tmp_path)],
                         capture_output=True, text=True, timeout=25)     # within the module's 30 s
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["answered 1", "gone Runtime exited with error: exit status 3"]
    closes = trace.read_text().splitlines()
    assert len(closes) > 10                   # the trace saw the loop's closes
    assert [line for line in closes if "EBADF" in line] == []
