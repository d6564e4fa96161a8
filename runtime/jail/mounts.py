"""Bind mounts made by the server itself, so that a jail started ahead of time can be handed its code later.

A slot is a pair of empty folders (`task`, `opt`) that a jail binds at /var/task and /opt/python when it
starts. Each is a shared mount point on the server's side, so a read-only bind of a function's code made
there afterwards appears inside the jail (which holds a slave copy) and nowhere else. The server makes
these mounts in a mount namespace of its own (`enter_private_namespace`), so that they go away with it,
even when it is killed, and never show on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE, _MS_SLAVE, _MS_SHARED = (
    1, 32, 4096, 16384, 1 << 18, 1 << 19, 1 << 20)
_MNT_DETACH = 2
_CLONE_NEWNS = 0x00020000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_private = False


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), None, flags, None),
           f"mount {source} on {target}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        log.warning("could not unmount a sandbox slot",
                    extra={"path": target, "error": os.strerror(ctypes.get_errno())})


def enter_private_namespace() -> bool:
    """Move this process into a mount namespace of its own (host mounts still show in it, its own never leave
    it). Must run before the process starts a thread; True when in force."""
    global _private
    if _private:
        return True
    if os.geteuid() != 0:
        return False
    threads = max(threading.active_count(), len(os.listdir("/proc/self/task")))
    if threads > 1:
        # unshare() of a mount namespace is refused to a process with threads. Said aloud, because what it costs
        # is otherwise invisible: every cold start builds its jail then (~60 ms more here).
        log.warning("jails cannot be started ahead of time: this process already runs threads, and its mount "
                    "namespace must be made before the first; every cold start builds its jail (slower). "
                    "Start no thread before the role's isolation check (cli/base.py check_isolation)",
                    extra={"threads": threads})
        return False
    if _libc.unshare(_CLONE_NEWNS) != 0:
        log.debug("no private mount namespace: %s", os.strerror(ctypes.get_errno()))
        return False
    _mount(None, "/", _MS_REC | _MS_SLAVE)
    _private = True
    return True


def in_private_namespace() -> bool:
    return _private


class Slot:
    """/var/task and /opt/python of one jail, as the server fills them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.task = folder / "task"
        self.opt = folder / "opt"
        self._stage = folder / "stage"
        self._filled: list[Path] = []
        for point in (self.task, self.opt, self._stage):
            point.mkdir(parents=True, exist_ok=True)
        for point in (self.task, self.opt):
            _mount(str(point), str(point), _MS_BIND)
            _mount(None, str(point), _MS_SHARED)

    def fill(self, task_root: Path, deps: Path | None) -> None:
        """Show the code (and the dependencies) in the jail, read-only."""
        for source, point in ((task_root, self.task), (deps, self.opt)):
            if source is None:
                continue
            # A bind made read-only first and then bound again: the copy that reaches the jail is read-only
            # too (a bind's own flags are copied; a remount afterwards would not propagate).
            _mount(str(source), str(self._stage), _MS_BIND)
            try:
                _mount(None, str(self._stage), _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
                _mount(str(self._stage), str(point), _MS_BIND)
            finally:
                _umount(str(self._stage))
            self._filled.append(point)

    def release(self) -> None:
        """Unmount everything of the slot and remove its folders (its jail has ended)."""
        for point in (*self._filled, self.task, self.opt):
            _umount(str(point))
        self._filled.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def remove_stale_slots(parent: Path) -> None:
    """Folders of slots whose server is gone (their mounts went with its namespace)."""
    if not parent.is_dir():
        return
    for folder in parent.iterdir():
        owner = folder.name.split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
