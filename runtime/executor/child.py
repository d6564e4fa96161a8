"""A sandbox's process: started with subprocess.Popen and watched through a pidfd, not asyncio's subprocess API.

Popen starts it with vfork, 0.4-0.7 ms in a gateway-sized process here, where uvloop's spawn forks the whole
server first, 6-11 ms, and holds the event loop all that time: every request in flight waited for each sandbox
start (a cold start, and the jail started ahead of time to replace the one it took). The exit is seen through a
pidfd that the event loop watches (Linux 5.3 and later; elsewhere a thread waits), and reaped by Popen itself,
so no child watcher of asyncio's or libuv's ever sees a process it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import threading
from typing import Sequence


def pipe_file(fd: int, mode: str) -> io.FileIO:
    """`fd` as the file object that the running loop's connect_read_pipe or connect_write_pipe wants; the transport
    owns the descriptor from then on and closes it once, when it is closed.

    uvloop's pipe transports close the descriptor themselves (libuv does) and then close the file object too, which
    closes the same number a second time (asyncio's own loop closes only the file object). In a process with
    threads that second close can hit a descriptor another thread has just been given under that number: a
    sandbox's cleanup thread lost the descriptor of the folder its shutil.rmtree was in, and the gateway failed
    to start. So under uvloop the file object does not own the descriptor."""
    owned = not type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    return io.FileIO(fd, mode, closefd=owned)


class Child:
    """What SandboxProcess needs of its process: `pid`, `returncode` (None until reaped; -N for signal N),
    `wait()`, and `stdin`, the write end of its input (the event loop's transport: whole frames, never blocks)."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: asyncio.WriteTransport,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._popen = popen
        self.stdin = stdin
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = -1
        self._watch(loop)

    @classmethod
    async def start(cls, command: Sequence[str], *, stdout: int, stderr: int, env: dict[str, str], cwd: str,
                    pass_fds: Sequence[int] = ()) -> Child:
        """Start `command` in a session of its own; `stdout` and `stderr` are descriptors the caller keeps."""
        loop = asyncio.get_running_loop()
        reads, writes = os.pipe2(os.O_CLOEXEC)
        try:
            popen = subprocess.Popen(list(command), stdin=reads, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                                     start_new_session=True, pass_fds=tuple(pass_fds))
        except BaseException:
            os.close(writes)
            raise
        finally:
            os.close(reads)
        try:
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe_file(writes, "wb"))
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            await asyncio.to_thread(popen.wait)
            raise
        return cls(popen, transport, loop)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """Its exit status, once it has exited (a cancelled waiter leaves it for the others)."""
        return await asyncio.shield(self._exited)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):       # no pidfd here: a thread waits for it instead
            threading.Thread(target=self._wait_in_thread, args=(loop,), name=f"sandbox-{self.pid}",
                             daemon=True).start()
            return
        loop.add_reader(self._pidfd, self._reap, loop)

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pidfd is readable: the process has exited."""
        if self._popen.poll() is None:
            return
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._done(self._popen.returncode)

    def _wait_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        code = self._popen.wait()
        with contextlib.suppress(RuntimeError):      # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(self._done, code)

    def _done(self, code: int) -> None:
        if not self._exited.done():
            self._exited.set_result(code)
