"""Jails started ahead of time, so that a cold start costs a mount and the handler's import, not a jail's start.

A blank jail runs the bootstrap and waits for its first frame: it knows no function until one is handed to
it (its code is then mounted into it, its cgroup given the function's memory, and its environment sent with
`init`), and it is never handed to another. Each shape of jail (network or none, the size of /tmp) has its
own few; one taken is replaced in the background once the cold start that took it is done (`replace`): a jail's
start holds the event loop for milliseconds (the fork and exec of bubblewrap), which it would otherwise do
while that cold start's handler imports, and the cold start waited for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Awaitable, Callable

from ..shutdown import in_background
from .process import SandboxProcess

log = logging.getLogger(__name__)

Shape = tuple[bool, int]            # (network, ephemeral_storage_mb)
DEFAULT_SHAPE: Shape = (True, 512)
MAX_SHAPES = 4                      # the shapes kept ready at once; the least recently used goes first


class Prestarted:
    def __init__(self, start: Callable[[Shape], Awaitable[SandboxProcess]], *, per_shape: int) -> None:
        self._start = start
        self._per_shape = per_shape
        self._ready: OrderedDict[Shape, list[SandboxProcess]] = OrderedDict()
        self._starting: dict[Shape, int] = {}
        self._filling: set[asyncio.Task[None]] = set()
        self._stopped = False

    def begin(self) -> None:
        """Start the jails of the shape most functions have."""
        self._ready.setdefault(DEFAULT_SHAPE, [])
        self.replace(DEFAULT_SHAPE)

    def take(self, shape: Shape) -> SandboxProcess | None:
        """A blank jail of `shape`, or None (none ready: the caller starts one). Either way the caller then
        calls `replace(shape)`, once its cold start is done."""
        ready = self._ready.setdefault(shape, [])
        self._ready.move_to_end(shape)
        while len(self._ready) > MAX_SHAPES:
            _, dropped = self._ready.popitem(last=False)
            for unused in dropped:
                in_background(unused.kill())
        sandbox: SandboxProcess | None = None
        while ready and sandbox is None:
            candidate = ready.pop()
            if candidate.alive:
                sandbox = candidate
            else:
                in_background(candidate.kill())
        return sandbox

    def replace(self, shape: Shape) -> None:
        """Start jails of `shape` until it has its few again (in the background)."""
        ready = self._ready.get(shape)
        if self._stopped or ready is None or len(ready) + self._starting.get(shape, 0) >= self._per_shape:
            return
        self._starting[shape] = self._starting.get(shape, 0) + 1
        task = asyncio.create_task(self._fill(shape))
        self._filling.add(task)
        task.add_done_callback(self._filling.discard)

    async def _fill(self, shape: Shape) -> None:
        try:
            sandbox = await self._start(shape)
        except Exception:       # the next cold start starts its own and reports what is wrong
            log.warning("could not start a jail ahead of time", exc_info=True)
            return
        finally:
            self._starting[shape] -= 1
        ready = self._ready.get(shape)
        if self._stopped or ready is None or len(ready) >= self._per_shape:
            await sandbox.kill()
            return
        ready.append(sandbox)
        self.replace(shape)

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._filling):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ready in self._ready.values():
            while ready:
                await ready.pop().kill()
