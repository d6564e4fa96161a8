"""The host's handle on one sandbox process: spawn it, send it invocations, kill it at the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any

import orjson

from ..sandbox import bootstrap

BOOTSTRAP = Path(bootstrap.__file__).resolve()
INIT_TIMEOUT_S = 10.0          # Lambda's init phase limit
_LENGTHS = struct.Struct(">II")
_RESULT = frozenset({"result"})
# Load the bootstrap as a module (not as a script) so its compiled bytecode is cached between spawns,
# under a name no handler module will have.
_LOADER = ("import importlib.util as u; s = u.spec_from_file_location('_lambent_sandbox', {path!r}); "
           "m = u.module_from_spec(s); s.loader.exec_module(m); m.main()")


class SandboxGone(Exception):
    """The process exited (or was killed) before it answered; `reason` reads like Lambda's."""

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
    process: asyncio.subprocess.Process
    memory_mb: int
    init_ms: float = 0.0
    init_logs: str = ""
    uses: int = 0
    last_used: float = field(default_factory=time.monotonic)
    broken: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(cls, *, python: str | None, task_root: Path, handler: str, memory_mb: int,
                    env: dict[str, str], extra_path: list[str], cpus: set[int] | None = None) -> SandboxProcess:
        """Start the process and run the function's init; raises InitFailed with Lambda's error."""
        executable = python or os.path.realpath(sys.executable)
        process = await asyncio.create_subprocess_exec(
            # -B: the code folder stays as deployed (Lambda's /var/task is read-only); the bootstrap's own
            # bytecode is cached by the server, which imports it too.
            executable, "-I", "-S", "-B", "-c", _LOADER.format(path=str(BOOTSTRAP)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, cwd=str(task_root), start_new_session=True)
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(process.pid, cpus)
        sandbox = cls(process=process, memory_mb=memory_mb)
        sandbox._send({"handler": handler, "task_root": str(task_root), "path": extra_path,
                       "memory_mb": memory_mb})
        logs: list[str] = []
        try:
            header = await asyncio.wait_for(sandbox._read_until({"ready", "init_error"}, logs), INIT_TIMEOUT_S)
        except (asyncio.TimeoutError, SandboxGone) as exc:
            await sandbox.kill()
            reason = (f"Init timed out after {INIT_TIMEOUT_S:.2f} seconds" if isinstance(exc, asyncio.TimeoutError)
                      else exc.reason)
            raise InitFailed({"errorType": "Runtime.ExitError", "errorMessage": reason, "stackTrace": []},
                             init_ms=0.0, logs="".join(logs)) from None
        if header["t"] == "init_error":
            await sandbox.kill()
            raise InitFailed(header["error"], init_ms=header.get("init_ms", 0.0), logs="".join(logs))
        sandbox.init_ms = header["init_ms"]
        sandbox.init_logs = "".join(logs)
        return sandbox

    async def invoke(self, header: dict[str, Any], payload: bytes, *, timeout_s: float, logs: list[str]) -> Reply:
        """Run one invocation. Log text is appended to `logs` as it arrives, so it survives a timeout.

        Raises asyncio.TimeoutError (the process is then killed) or SandboxGone.
        """
        self.uses += 1
        self._send(header, payload)
        try:
            async with asyncio.timeout(timeout_s):    # no extra task per call, unlike wait_for
                reply = await self._read_until(_RESULT, logs)
        except BaseException:       # the deadline, a cancelled caller, or a broken pipe: never reuse it
            await self.kill()
            raise
        self.last_used = time.monotonic()
        if reply.get("fatal"):
            self.broken = True      # it exits right after this answer: never hand it another invocation
        return Reply(header=reply, payload=self._last_payload, logs="".join(logs))

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        assert self.process.stdin is not None
        data = orjson.dumps(header)
        self.process.stdin.write(_LENGTHS.pack(len(data), len(payload)) + data + payload)

    async def _read_until(self, kinds: AbstractSet[str], logs: list[str]) -> dict[str, Any]:
        reader = self.process.stdout
        assert reader is not None
        while True:
            try:
                header_len, payload_len = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
                body = await reader.readexactly(header_len + payload_len)
            except (asyncio.IncompleteReadError, ConnectionError):
                raise SandboxGone(await self._exit_reason()) from None
            header = orjson.loads(body[:header_len])
            if header["t"] == "log":
                logs.append(header["text"])
                continue
            if header["t"] in kinds:
                self._last_payload = body[header_len:]
                return header

    _last_payload: bytes = b""

    async def _exit_reason(self) -> str:
        self.broken = True
        try:
            code = await asyncio.wait_for(self.process.wait(), 5.0)
        except asyncio.TimeoutError:
            await self.kill()
            return "Runtime exited without providing a reason"
        if code < 0:
            name = signal.Signals(-code).name.removeprefix("SIG").lower()
            return f"Runtime exited with error: signal: {name}"
        return f"Runtime exited with error: exit status {code}"

    @property
    def alive(self) -> bool:
        return not self.broken and self.process.returncode is None

    async def kill(self) -> None:
        """Kill the sandbox and anything it started (its own process group)."""
        self.broken = True
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(Exception):
            await self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
