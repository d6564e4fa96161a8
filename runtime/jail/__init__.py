"""The execution environment around a sandbox: a jail per sandbox process, or none.

`Isolation.open(config)` finds out once what this host allows (`sandbox.isolation: auto | jail | none`);
`Isolation.launch(...)` then gives, for each sandbox, the command to start, the cgroup that bounds it and
the paths its code sees. Only the executor's process handle calls it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import Config
from . import mounts
from .bwrap import DEPS_DIR, LD_LIBRARY_PATH, PATH, RUNTIME_DIR, TASK_ROOT, Bubblewrap, JailUnavailable, View
from .cgroups import Cgroup, Cgroups, CgroupsUnavailable
from .mounts import Slot, enter_private_namespace
from .seccomp import SeccompUnavailable, write_filter

log = logging.getLogger(__name__)

__all__ = ["Isolation", "IsolationError", "Launch", "View", "enter_private_namespace"]

_BOOTSTRAP = Path(__file__).resolve().parent.parent / "sandbox" / "bootstrap.py"
_FIXED_ENV = {"LANG": "C.UTF-8", "TZ": ":UTC", "HOME": "/tmp", "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"}
# What a function can do when it is not jailed: said in the start-up warning.
UNJAILED_RISK = ("functions run as the server's own user with its filesystem and processes in view: a function "
                 "can read the server's secrets (/proc/<pid>/environ), other functions' code and /tmp, "
                 "signal the server, and escape its timeout and memory limit through child processes")


class IsolationError(Exception):
    """`sandbox.isolation: jail` and this host cannot jail; the message says what is missing."""


@dataclass(kw_only=True)
class Launch:
    """How to start one sandbox process."""
    command: list[str]
    cwd: str
    env: dict[str, str]
    task_root: str                  # the code folder as the sandbox sees it
    path: list[str]                 # further sys.path entries as the sandbox sees them
    cgroup: Cgroup | None
    slot: Slot | None = None        # set: the code is shown to the jail once the process has started
    pass_fds: tuple[int, ...] = ()

    def close_fds(self) -> None:
        """The descriptors handed to the child are the child's now; the server's copies go."""
        for fd in self.pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self) -> None:
        """The process could not be started: remove what was made for it."""
        if self.cgroup is not None:
            self.cgroup.remove(0)
        if self.slot is not None:
            self.slot.release()


class Isolation:
    """The mode in force on this node, and the means to launch sandboxes in it."""

    def __init__(self, *, mode: Literal["jail", "none"], reason: str = "", jail: Bubblewrap | None = None,
                 cgroups: Cgroups | None = None, python: str, slots: Path = Path("/nonexistent")) -> None:
        self.mode = mode
        self.reason = reason            # why there is no jail, when there is none
        self._jail = jail
        self._cgroups = cgroups
        self._python = python
        self._slots = slots             # where the slots of jails started ahead of time are made
        self._counter = itertools.count(1)

    def describe(self) -> dict[str, object]:
        """The mode for /healthz and the console."""
        return {"mode": self.mode, "cgroups": None if self._cgroups is None else self._cgroups.version,
                "reason": self.reason or None}

    @classmethod
    def open(cls, config: Config) -> Isolation:
        """Detect what this host allows. `auto` falls back to no jail with a WARNING naming what is missing;
        `jail` raises IsolationError instead; `none` never jails."""
        python = config.sandbox.python or os.path.realpath(sys.executable)
        wanted = config.sandbox.isolation
        if wanted == "none":
            log.warning("sandbox.isolation is none: %s", UNJAILED_RISK)
            return cls(mode="none", reason="sandbox.isolation is none", python=python)
        try:
            jail, cgroups = _build(config, python)
        except (JailUnavailable, CgroupsUnavailable, SeccompUnavailable) as exc:
            if wanted == "jail":
                raise IsolationError(f"sandbox.isolation is jail, but this host cannot jail functions: {exc}") from None
            log.warning("NO JAIL: functions run without isolation because %s; %s. Fix that, or set "
                        "sandbox.isolation: none to say this is meant (jail: refuse to start).", exc, UNJAILED_RISK)
            return cls(mode="none", reason=str(exc), python=python)
        log.info("functions run jailed", extra={"cgroups": f"v{cgroups.version}",
                                                "started_ahead": mounts.in_private_namespace()})
        slots = config.data_dir / "jail" / "slots"
        mounts.remove_stale_slots(slots)
        return cls(mode="jail", jail=jail, cgroups=cgroups, python=python, slots=slots)

    @property
    def starts_ahead(self) -> bool:
        """Jails can be started before their function is known (their code is mounted into them later)."""
        return self._jail is not None and mounts.in_private_namespace()

    def launch(self, view: View, *, argv: list[str], env: dict[str, str], memory_mb: int) -> Launch:
        """The command for one sandbox: its process tree in a cgroup of `memory_mb` (jail), or a plain child.
        A `view` without a task root is a jail started ahead of time, whose slot is filled later."""
        if self._jail is None or self._cgroups is None:
            assert view.task_root is not None
            path = [str(view.deps)] if view.deps is not None else []
            return Launch(command=[self._python, *argv], cwd=str(view.task_root), env=env,
                          task_root=str(view.task_root), path=path, cgroup=None)
        slot = None
        if view.task_root is None:
            slot = mounts.Slot(self._slots / f"{os.getpid()}-{next(self._counter)}")
            view = View(task_root=None, deps=None, ephemeral_mb=view.ephemeral_mb, network=view.network, slot=slot)
        try:
            cgroup = self._cgroups.create(memory_mb=memory_mb)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        fd = self._jail.open_filter()
        command = self._jail.command(view, argv=argv, cgroup_procs=cgroup.procs_files, seccomp_fd=fd)
        return Launch(command=command, cwd="/", task_root=TASK_ROOT, path=[DEPS_DIR, RUNTIME_DIR], cgroup=cgroup,
                      slot=slot, env=env, pass_fds=(fd,))

    def base_env(self) -> dict[str, str]:
        """What every sandbox's environment starts from, before Lambda's variables and the function's own:
        in a jail, Lambda's paths."""
        if self._jail is None:
            return {**_FIXED_ENV, "PATH": "/usr/local/bin:/usr/bin:/bin", "LAMBDA_RUNTIME_DIR": str(_BOOTSTRAP.parent)}
        return {**_FIXED_ENV, "PATH": PATH, "LD_LIBRARY_PATH": LD_LIBRARY_PATH, "LAMBDA_RUNTIME_DIR": RUNTIME_DIR}

    @property
    def bootstrap_path(self) -> str | None:
        """Where the jailed sandbox finds the bootstrap (None: the host's own path)."""
        return f"{RUNTIME_DIR}/bootstrap.py" if self._jail is not None else None


def _build(config: Config, python: str) -> tuple[Bubblewrap, Cgroups]:
    jail_dir = config.data_dir / "jail"
    cgroups = Cgroups.detect()
    cgroups.remove_stale()
    cgroups.check()
    seccomp_filter = write_filter(jail_dir / "seccomp.bpf")
    jail = Bubblewrap.find(python=python, bootstrap=_BOOTSTRAP, jail_dir=jail_dir,
                           seccomp_filter=seccomp_filter, uid=config.sandbox.uid, gid=config.sandbox.gid)
    _trial(jail, config)
    return jail, cgroups


def _trial(jail: Bubblewrap, config: Config) -> None:
    """Start one jailed `python -c pass`: namespaces can be refused where the binaries exist (a container
    without the privileges, a kernel that forbids them); say so at start-up, not at the first invocation."""
    folder = config.data_dir / "jail" / "trial"
    folder.mkdir(parents=True, exist_ok=True)
    fd = jail.open_filter()
    try:
        command = jail.command(View(task_root=folder, deps=None, ephemeral_mb=16, network=False),
                               argv=["-I", "-S", "-c", "pass"], cgroup_procs=[], seccomp_fd=fd)
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, pass_fds=(fd,), env={})
    except (OSError, subprocess.SubprocessError) as exc:
        raise JailUnavailable(f"bubblewrap could not start: {exc}") from None
    finally:
        os.close(fd)
    if out.returncode != 0:
        raise JailUnavailable(f"bubblewrap could not build the jail: {out.stderr.strip()[-500:] or out.returncode}")
