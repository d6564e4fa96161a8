"""The host's handle on one sandbox process: spawn it, send it invocations, kill it at the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any

import orjson

from ..jail import Launch
from ..jail.cgroups import Cgroup
from ..jail.mounts import Slot
from ..sandbox import bootstrap
from .child import Child, pipe_file

BOOTSTRAP = Path(bootstrap.__file__).resolve()
INIT_TIMEOUT_S = 10.0          # Lambda's init phase limit
_RESULT = frozenset({"result"})
_BACK_TO_BACK = 4       # a call this many poll budgets or less after its sandbox's last answer: it polls next
_CONTENTION_WINDOW_S = 0.1  # how often the gateway's own wait for a CPU is read (_cpu_contended)
_CONTENDED_SHARE = 0.1      # no polling while this process waited for a CPU this share of the last window
_awaited = 0            # invocations of this process awaiting their sandbox's answer (SandboxProcess.invoke)
_UNREAD_OUTPUT_MAX = 64 * 1024    # of a dead sandbox's fd output, the last this many bytes go to its log
# How Lambda words a runtime's death by these signals ("Runtime exited with error: signal: killed").
_SIGNAL_WORDS: dict[int, str] = {signal.SIGKILL: "killed", signal.SIGSEGV: "segmentation fault",
                                 signal.SIGABRT: "aborted", signal.SIGTERM: "terminated", signal.SIGBUS: "bus error"}
# Load the bootstrap as a module (not as a script) so its compiled bytecode is cached between spawns,
# under a name no handler module will have.
_LOADER = ("import importlib.util as u; s = u.spec_from_file_location('_lambent_sandbox', {path!r}); "
           "m = u.module_from_spec(s); s.loader.exec_module(m); m.main()")


class _Contention(threading.local):
    """_cpu_contended's state, per thread (the wait read is the thread's own). Its descriptor stays open for the
    thread's life: one per thread that invokes, and a role invokes from its event loop's thread alone."""

    window_start = float("-inf")
    waited_ns = 0
    contended = False
    schedstat = -1


_contention = _Contention()


def _cpu_contended() -> bool:
    """Whether this thread waited for a CPU for _CONTENDED_SHARE or more of the last window: the host is loaded
    to its last CPU (or the sandbox shares this one), and a poll would hold a CPU that another process, maybe
    the sandbox it waits for, needs. Measured here, c=1 with two CPU-bound processes beside the bench: 1,220-1,490
    req/s polling, 1,500-2,100 not; this thread waited for a CPU 22-34% of the time then, 1-3% on an idle host.
    Read from bootstrap.SCHEDSTAT once a window; an unreadable one counts as not contended."""
    state = _contention
    now = time.perf_counter()
    if now - state.window_start < _CONTENTION_WINDOW_S:
        return state.contended
    try:
        if state.schedstat < 0:
            state.schedstat = os.open(bootstrap.SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
        waited_ns = bootstrap.waited_for_cpu_ns(state.schedstat)
    except (OSError, ValueError, IndexError):
        waited_ns = state.waited_ns
    state.contended = waited_ns - state.waited_ns >= _CONTENDED_SHARE * (now - state.window_start) * 1e9
    state.window_start, state.waited_ns = now, waited_ns
    return state.contended


class _Deadline:
    """The deadline of the invocation a sandbox runs, kept by one timer that outlives the call. asyncio.timeout
    makes a timer and cancels it on every call: 4 us of a warm call here. This one is armed when no timer is
    due before the deadline, and when it fires before the running call's deadline it is armed again for it:
    a sandbox's calls come far faster than its timeout, so most find a timer already set. When the deadline
    is reached, the waiting task is cancelled and its wait raises TimeoutError, as with asyncio.timeout (a
    cancellation of the caller's own still raises CancelledError)."""

    __slots__ = ("_loop", "_task", "_cancelling", "_at", "_timer", "_timer_at", "expired")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._at = self._timer_at = float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self.expired = False

    def start(self, timeout_s: float) -> None:
        """The calling task's wait ends at now + `timeout_s` (loop time)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = self._task = asyncio.current_task(loop)
        assert task is not None
        self._cancelling = task.cancelling()
        self._at = loop.time() + timeout_s
        self.expired = False
        if self._at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = self._at
            self._timer = loop.call_at(self._at, self._fire)

    def timed_out(self) -> bool:
        """After the wait raised CancelledError: whether the deadline did it (once per cancellation of ours)."""
        assert self._task is not None
        return self.expired and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._task = None
        self._at = float("inf")

    def close(self) -> None:
        self.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = float("inf")

    def _fire(self) -> None:
        fired_at, self._timer, self._timer_at = self._timer_at, None, float("inf")
        if self._task is None or self._loop is None:
            return
        if self._at <= fired_at:
            self.expired = True
            self._task.cancel()
        else:                                   # armed for an earlier call: now for this one
            self._timer_at = self._at
            self._timer = self._loop.call_at(self._at, self._fire)


class SandboxGone(Exception):
    """The process exited (or was killed) before it answered; `reason` reads like Lambda's. `out_of_memory`: the
    kernel's OOM killer ended it (jail only), read when it is found dead: its kill() then drops the cgroup."""

    def __init__(self, reason: str, *, out_of_memory: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.out_of_memory = out_of_memory


class InitFailed(Exception):
    def __init__(self, error: dict[str, Any], *, init_ms: float, logs: str) -> None:
        super().__init__(error.get("errorMessage", "init failed"))
        self.error = error
        self.init_ms = init_ms
        self.logs = logs


@dataclass(kw_only=True)
class Reply:
    header: dict[str, Any]
    payload: bytes
    logs: str


@dataclass(eq=False, kw_only=True)
class SandboxProcess:
    process: Child
    memory_mb: int
    init_ms: float = 0.0
    init_logs: str = ""
    cgroup: Cgroup | None = None        # the jail's cgroup (None without a jail)
    slot: Slot | None = None            # where a jail started ahead of time is shown its code
    task_root: str = ""                 # the code folder as the sandbox sees it
    path: list[str] = field(default_factory=list)   # further sys.path entries as the sandbox sees them
    last_used: float = field(default_factory=time.monotonic)
    broken: bool = False
    # The sandbox's fds 1 and 2 (and its children's): a memory file, which the sandbox reads into each
    # invocation's log up to `output_seen`; after a crash the host reads what is left (a segfault's trace).
    output_fd: int = -1
    output_seen: int = 0
    # The frames it sends (its stdout), as the event loop reads them; and a descriptor of that pipe to poll.
    replies: asyncio.StreamReader = field(default_factory=asyncio.StreamReader)
    replies_fd: int = -1
    last_duration_ms: float = 0.0       # of its last invocation: whether polling for the next answer may pay
    _answered_at: float = float("-inf")  # when its last answer was read (perf_counter)
    _oom_kills: int = 0
    _deadline: _Deadline = field(default_factory=_Deadline)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, launch: Launch) -> SandboxProcess:
        """Start the process: it loads the bootstrap and waits for `init` (a jail may be started ahead of
        time, before its function is known)."""
        output = os.memfd_create("lambent-sandbox-output", os.MFD_CLOEXEC)
        # Its stdout, the frames it answers with, is a pipe of ours rather than asyncio's: the event loop reads it
        # as before, and a copy of its descriptor lets a short wait poll it (_poll_reply).
        replies, reply_end = os.pipe2(os.O_CLOEXEC)
        try:
            process = await Child.start(launch.command, stdout=reply_end, stderr=output, env=launch.env,
                                        cwd=launch.cwd, pass_fds=launch.pass_fds)
        except BaseException:
            os.close(output)
            os.close(replies)
            launch.release()
            raise
        finally:
            os.close(reply_end)
            launch.close_fds()
        sandbox = cls(process=process, memory_mb=0, cgroup=launch.cgroup, slot=launch.slot,
                      task_root=launch.task_root, path=launch.path, output_fd=output, replies_fd=os.dup(replies))
        os.set_blocking(replies, False)         # the copy too: one open file
        try:
            await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(sandbox.replies), pipe_file(replies, "rb"))
        except BaseException:
            await sandbox.kill()
            raise
        return sandbox

    async def init(self, *, handler: str, memory_mb: int, env: dict[str, str], task_root: Path | None = None,
                   deps: Path | None = None, cpus: set[int] | None = None) -> None:
        """Hand the process its function and run the function's init; raises InitFailed with Lambda's error.
        A jail started ahead of time is first shown the code and given the function's memory limit."""
        self.memory_mb = memory_mb
        try:
            if self.slot is not None and task_root is not None:
                self.slot.fill(task_root, deps)
            if self.cgroup is not None:
                self.cgroup.limit(memory_mb=memory_mb)
            if cpus:
                for pid in {self.process.pid, *(self.cgroup.pids() if self.cgroup is not None else [])}:
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(pid, cpus)
        except OSError as exc:
            await self.kill()
            raise InitFailed({"errorType": "Runtime.ExitError", "stackTrace": [],
                              "errorMessage": f"Sandbox could not be prepared: {exc}"}, init_ms=0.0, logs="") from None
        env = {**env, "LAMBDA_TASK_ROOT": self.task_root}
        self._send({"handler": handler, "task_root": self.task_root, "path": self.path, "memory_mb": memory_mb,
                    "env": env})
        logs: list[str] = []
        try:
            header, _ = await asyncio.wait_for(self._read_until({"ready", "init_error"}, logs), INIT_TIMEOUT_S)
        except (asyncio.TimeoutError, SandboxGone) as exc:
            await self.kill()
            if isinstance(exc, SandboxGone) and exc.out_of_memory:
                error = {"errorType": "Runtime.OutOfMemory", "stackTrace": [],
                         "errorMessage": "Runtime exited: the function ran out of memory during init"}
            else:
                reason = (f"Init timed out after {INIT_TIMEOUT_S:.2f} seconds"
                          if isinstance(exc, asyncio.TimeoutError) else exc.reason)
                error = {"errorType": "Runtime.ExitError", "errorMessage": reason, "stackTrace": []}
            raise InitFailed(error, init_ms=0.0, logs="".join(logs)) from None
        if header["t"] == "init_error":
            await self.kill()
            raise InitFailed(header["error"], init_ms=header.get("init_ms", 0.0), logs="".join(logs))
        self.init_ms = header["init_ms"]
        self.init_logs = "".join(logs)
        self._oom_kills = self._read_oom_kills()

    def out_of_memory(self) -> bool:
        """The kernel's OOM killer ended a process of this sandbox's tree since the last look (jail only):
        its memory_mb was exceeded, by the sandbox or by a child process."""
        if self.cgroup is None:
            return False
        kills = self._read_oom_kills()
        if kills == self._oom_kills:
            return False
        self._oom_kills = kills
        self.broken = True
        return True

    def _read_oom_kills(self) -> int:
        return 0 if self.cgroup is None else self.cgroup.oom_kills()

    async def invoke(self, header: dict[str, Any], payload: bytes, *, timeout_s: float, logs: list[str],
                     poll_s: float = 0.0) -> Reply:
        """Run one invocation. Log text is appended to `logs` as it arrives, so it survives a timeout.
        `poll_s`: how long the answer may be polled for first (sandbox.poll_us; see _poll_reply).

        Raises asyncio.TimeoutError (the process is then killed) or SandboxGone.
        """
        global _awaited
        _awaited += 1
        try:
            poll = _awaited == 1 and self.last_duration_ms < poll_s * 1000 and not _cpu_contended()
            if poll and time.perf_counter() - self._answered_at < _BACK_TO_BACK * poll_s:
                # calls come one after another: the sandbox polls for the next one after answering
                # (bootstrap._poll_input); not for calls a role makes between longer work of its own (a worker's)
                header = {**header, "poll_us": round(poll_s * 1e6)}
            self._deadline.start(timeout_s)
            self._send(header, payload)
            if poll:
                self._poll_reply(min(poll_s, timeout_s))
            try:
                reply, answer = await self._read_until(_RESULT, logs)
            except asyncio.CancelledError:
                if self._deadline.timed_out():
                    raise asyncio.TimeoutError from None
                raise
        except BaseException:       # the deadline, a cancelled caller, or a broken pipe: never reuse it
            await self.kill()
            raise
        finally:
            self._deadline.stop()
            _awaited -= 1
        self.last_used = time.monotonic()
        self.last_duration_ms = reply.get("duration_ms", 0.0)
        self._answered_at = time.perf_counter()
        if reply.get("fatal"):
            self.broken = True      # it exits right after this answer: never hand it another invocation
        return Reply(header=reply, payload=answer, logs="".join(logs))

    def _poll_reply(self, budget_s: float) -> None:
        """Read the sandbox's first bytes of answer by polling its pipe for up to `budget_s`, the event loop held.

        Only when no other invocation of this process awaits an answer and no caller queues for a sandbox of the
        version (the executor then gives no budget): the loop has nothing else that is due soon. And only for a
        sandbox whose last invocation took less than the budget. Waiting in the loop
        instead, the process sleeps, and on a virtual machine the wake-up when the answer comes costs more than
        a fast handler's run: a pipe round trip between two sleeping processes on two CPUs took 80 us here, 25 us
        with one of them polling (bench/sync.py prints it). What was read goes to `replies`, in order: the loop
        does not read the pipe meanwhile. The deadline is unchanged: the budget is within it. Between reads it
        yields the CPU to any process that waits for it (the sandbox, if it shares this CPU)."""
        end = time.perf_counter() + budget_s
        while True:
            try:
                data = os.read(self.replies_fd, 1 << 16)
            except BlockingIOError:
                if time.perf_counter() < end:
                    os.sched_yield()
                    continue
                return
            except OSError:
                return
            if data:                # b"": it exited; the loop reads that end too
                self.replies.feed_data(data)
            return

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.process.stdin.write(bootstrap.pack_frame(orjson.dumps(header), payload))

    async def _read_until(self, kinds: AbstractSet[str], logs: list[str]) -> tuple[dict[str, Any], bytes]:
        """The next frame of one of `kinds` (header, payload); log frames on the way go to `logs`."""
        reader = self.replies
        while True:
            try:
                lengths = await reader.readexactly(bootstrap.FRAME_LENGTHS.size)
                header_len, payload_len = bootstrap.FRAME_LENGTHS.unpack(lengths)
                body = await reader.readexactly(header_len + payload_len)
            except (asyncio.IncompleteReadError, ConnectionError):
                reason = await self._exit_reason()
                logs.append(self._unread_output())
                raise SandboxGone(reason, out_of_memory=self.out_of_memory()) from None
            header = orjson.loads(body[:header_len])
            if header["t"] == "log":
                logs.append(header["text"])
                continue
            if header["t"] in kinds:
                self.output_seen = header.get("out", self.output_seen)
                return header, body[header_len:]

    def _unread_output(self) -> str:
        """What the dead sandbox and its children wrote to fds 1 and 2 after its last answer (capped)."""
        try:
            end = os.fstat(self.output_fd).st_size
            start = max(self.output_seen, end - _UNREAD_OUTPUT_MAX) if end >= self.output_seen else 0
            return os.pread(self.output_fd, end - start, start).decode(errors="replace")
        except OSError:
            return ""

    async def _exit_reason(self) -> str:
        self.broken = True
        try:
            code = await asyncio.wait_for(self.process.wait(), 5.0)
        except asyncio.TimeoutError:
            await self.kill()
            return "Runtime exited without providing a reason"
        if self.cgroup is not None and code > 128:     # bwrap answers a signal's death as 128 + its number
            code = 128 - code
        if code < 0:
            name = _SIGNAL_WORDS.get(-code) or signal.Signals(-code).name.removeprefix("SIG").lower()
            return f"Runtime exited with error: signal: {name}"
        return f"Runtime exited with error: exit status {code}"

    @property
    def alive(self) -> bool:
        return not self.broken and self.process.returncode is None

    async def kill(self) -> None:
        """Kill the sandbox and anything it started: its process group, and with a jail its whole cgroup
        (the jail's PID namespace ends with its first process anyway; this is the net under it)."""
        self.broken = True
        self._deadline.close()
        if self.process.returncode is None:
            # The process leads a group of its own (start_new_session), so this reaches it too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_all()
        with contextlib.suppress(Exception):
            await self.process.wait()
        self.process.stdin.close()
        if self.output_fd >= 0:
            os.close(self.output_fd)
            self.output_fd = -1
        if self.replies_fd >= 0:
            os.close(self.replies_fd)
            self.replies_fd = -1
        if self.cgroup is not None or self.slot is not None:
            cgroup, slot, self.cgroup, self.slot = self.cgroup, self.slot, None, None
            await asyncio.to_thread(_clean_up, cgroup, slot)


def _clean_up(cgroup: Cgroup | None, slot: Slot | None) -> None:
    """After a jail's processes are gone: its cgroup and its slot's mounts."""
    if cgroup is not None:
        cgroup.remove()
    if slot is not None:
        slot.release()


def bootstrap_argv(path: str) -> list[str]:
    """The interpreter's arguments that run the bootstrap at `path` (as the sandbox sees it)."""
    # -B: the code folder stays as deployed (Lambda's /var/task is read-only); the bootstrap's own bytecode
    # comes from the server (a jail's is compiled at start, see jail.bwrap; without a jail, the server's import).
    return ["-I", "-S", "-B", "-c", _LOADER.format(path=path)]
