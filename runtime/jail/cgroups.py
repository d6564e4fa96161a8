"""cgroup limits for one sandbox's whole process tree: memory, pids and a CPU weight; v1 and v2.

The server creates one cgroup per sandbox below its own (`<own cgroup>/lambent/<pid>-<n>`), so that
what the host grants the server also bounds its sandboxes. The sandbox's processes are placed in it
before the jail execs anything (see jail.bwrap), so no process of the function ever runs outside it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PIDS_MAX = 1024                 # processes and threads per sandbox, as Lambda's limit
_LAMBDA_MB_PER_VCPU = 1769      # Lambda gives one vCPU's worth of CPU at 1,769 MB
_V1_CONTROLLERS = ("memory", "pids", "cpu")
_V2_CONTROLLERS = ("memory", "pids", "cpu")
_counter = itertools.count(1)


class CgroupsUnavailable(Exception):
    """No cgroup hierarchy this process may create limits in; the message says what is missing."""


@dataclass(kw_only=True)
class Cgroup:
    """One sandbox's cgroup: a directory per hierarchy (v1) or one directory (v2)."""
    version: int
    dirs: tuple[Path, ...]
    memory_dir: Path
    cpu_dir: Path | None
    oom_file: Path                  # memory.oom_control (v1) or memory.events (v2): holds `oom_kill N`
    kill_file: Path | None          # cgroup.kill (v2, Linux 5.14+)
    memory_mb: int = 0
    _oom_fd: int = field(default=-1, repr=False)

    def limit(self, *, memory_mb: int) -> None:
        """memory_mb for the whole tree (no swap), and a CPU weight in proportion to it, as Lambda gives CPU
        in proportion to memory. May be changed while the sandbox runs (a jail started ahead of time)."""
        if memory_mb == self.memory_mb:
            return
        memory = str(memory_mb * 1024 * 1024)
        if self.version == 1:
            # memsw (memory + swap) may never be below the memory limit: raise it first, lower it last.
            swap = self.memory_dir / "memory.memsw.limit_in_bytes"
            order = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            if self.memory_mb and memory_mb > self.memory_mb:     # (0: never set, so unlimited)
                order.reverse()
            for name in order:
                if name == "memory.limit_in_bytes" or swap.exists():
                    (self.memory_dir / name).write_text(memory)
            if self.cpu_dir is not None:
                shares = max(2, min(262144, 1024 * memory_mb // _LAMBDA_MB_PER_VCPU))
                (self.cpu_dir / "cpu.shares").write_text(str(shares))
        else:
            (self.memory_dir / "memory.max").write_text(memory)
            if self.cpu_dir is not None:
                with contextlib.suppress(FileNotFoundError):      # cpu is optional in a delegated tree
                    (self.cpu_dir / "cpu.weight").write_text(
                        str(max(1, min(10000, 100 * memory_mb // _LAMBDA_MB_PER_VCPU))))
        self.memory_mb = memory_mb

    @property
    def procs_files(self) -> list[str]:
        return [str(folder / "cgroup.procs") for folder in self.dirs]

    def oom_kills(self) -> int:
        """How many processes of this cgroup the kernel's OOM killer has ended so far."""
        try:
            if self._oom_fd < 0:
                self._oom_fd = os.open(self.oom_file, os.O_RDONLY)
            text = os.pread(self._oom_fd, 4096, 0)
        except OSError:
            return 0
        start = text.find(b"oom_kill ")      # read on every invocation: no regular expression
        return int(text[start + 9:text.find(b"\n", start)]) if start >= 0 else 0

    def pids(self) -> list[int]:
        """The processes in the cgroup now."""
        with contextlib.suppress(OSError):
            return [int(pid) for pid in (self.memory_dir / "cgroup.procs").read_text().split()]
        return []

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup (the jail's own PID namespace does too; this is the net)."""
        if self.kill_file is not None:
            with contextlib.suppress(OSError):
                self.kill_file.write_text("1")
                return
        for folder in self.dirs:
            with contextlib.suppress(OSError):
                for pid in (folder / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Remove the directories once their processes are gone; False when some stayed past the deadline."""
        if self._oom_fd >= 0:
            os.close(self._oom_fd)
            self._oom_fd = -1
        deadline = time.monotonic() + timeout_s
        pending = list(self.dirs)
        while pending:
            folder = pending[0]
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("could not remove a sandbox cgroup", extra={"path": str(folder), "error": str(exc)})
                    return False
                self.kill_all()
                time.sleep(0.01)
                continue
            pending.pop(0)
        return True


class Cgroups:
    """The cgroup version in force on this host and the folders the server may create sandboxes in."""

    def __init__(self, *, version: int, parents: dict[str, Path]) -> None:
        self.version = version
        self._parents = parents          # controller -> <own cgroup>/lambent (v2: one folder under "")

    @classmethod
    def detect(cls, *, proc: Path = Path("/proc/self")) -> Cgroups:
        """Find the hierarchies and this process's place in them; raises CgroupsUnavailable."""
        mounts = _cgroup_mounts(proc / "mountinfo")
        own = _own_cgroups(proc / "cgroup")
        v1 = {name: mounts[name] for name in _V1_CONTROLLERS if name in mounts}
        if {"memory", "pids"} <= v1.keys():
            parents = {}
            for name, (root, point) in v1.items():
                parents[name] = _join(point, root, own.get(name, "/")) / "lambent"
            return cls(version=1, parents=parents)
        if "" in mounts:
            root, point = mounts[""]
            return cls(version=2, parents={"": _prepare_v2(_join(point, root, own.get("", "/")))})
        missing = sorted({"memory", "pids"} - v1.keys())
        raise CgroupsUnavailable(f"no cgroup v2 hierarchy and no v1 hierarchy for {', '.join(missing)} "
                                 "is mounted")

    def check(self) -> None:
        """Create and remove a cgroup with every limit set: proves that this process may; raises otherwise."""
        group = self.create(memory_mb=128)
        group.remove()

    def create(self, *, memory_mb: int) -> Cgroup:
        """A new cgroup with the sandbox's limits (see Cgroup.limit) and PIDS_MAX processes and threads."""
        name = f"{os.getpid()}-{next(_counter)}"
        dirs: list[Path] = []
        try:
            for parent in self._parents.values():
                folder = parent / name
                folder.mkdir(parents=True)
                dirs.append(folder)
            if self.version == 1:
                memory_dir = self._parents["memory"] / name
                cpu_dir = self._parents["cpu"] / name if "cpu" in self._parents else None
                (self._parents["pids"] / name / "pids.max").write_text(str(PIDS_MAX))
                group = Cgroup(version=1, dirs=tuple(dirs), memory_dir=memory_dir, cpu_dir=cpu_dir,
                               oom_file=memory_dir / "memory.oom_control", kill_file=None)
            else:
                folder = dirs[0]
                (folder / "pids.max").write_text(str(PIDS_MAX))
                for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    with contextlib.suppress(FileNotFoundError):
                        (folder / optional).write_text(value)
                kill = folder / "cgroup.kill"
                group = Cgroup(version=2, dirs=(folder,), memory_dir=folder, cpu_dir=folder,
                               oom_file=folder / "memory.events", kill_file=kill if kill.exists() else None)
            group.limit(memory_mb=memory_mb)
            return group
        except OSError as exc:
            for folder in dirs:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise CgroupsUnavailable(f"cannot create a sandbox cgroup: {exc}") from None

    def remove_stale(self) -> None:
        """Remove the sandbox cgroups of servers that are gone (a kill -9 leaves them behind, empty)."""
        for parent in self._parents.values():
            if not parent.is_dir():
                continue
            for folder in parent.iterdir():
                owner = folder.name.split("-", 1)[0]
                if folder.is_dir() and owner.isdigit() and not _alive(int(owner)):
                    with contextlib.suppress(OSError):
                        folder.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _join(mount_point: Path, mount_root: str, own: str) -> Path:
    """The folder of cgroup `own` in a hierarchy mounted at `mount_point` (showing `mount_root` there)."""
    if mount_root != "/" and (own == mount_root or own.startswith(mount_root + "/")):
        own = own[len(mount_root):]
    return mount_point / own.lstrip("/")


def _cgroup_mounts(mountinfo: Path) -> dict[str, tuple[str, Path]]:
    """controller -> (root, mount point) for v1 hierarchies; "" -> the same for the v2 hierarchy."""
    found: dict[str, tuple[str, Path]] = {}
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = fields[3], Path(fields[4].replace("\\040", " "))
        if tail[0] == "cgroup2":
            found.setdefault("", (root, point))
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                found.setdefault(option, (root, point))
    return found


def _own_cgroups(cgroup_file: Path) -> dict[str, str]:
    """controller -> this process's cgroup path ("" for v2)."""
    own: dict[str, str] = {}
    for line in cgroup_file.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path
    return own


def _prepare_v2(base: Path) -> Path:
    """The folder sandboxes are created in: `base/lambent`, with the controllers enabled on the way.

    cgroup v2 lets only leaves hold processes once controllers are enabled below a cgroup. A server at
    the root of its cgroup namespace (a container) moves the processes it shares that cgroup with into a
    leaf `base/init`, as Docker-in-Docker does; elsewhere the host must delegate a cgroup (systemd:
    `Delegate=yes`) whose processes sit in a leaf of their own."""
    available = set((base / "cgroup.controllers").read_text().split())
    missing = {"memory", "pids"} - available
    if missing:
        raise CgroupsUnavailable(f"cgroup v2 at {base}: controllers {', '.join(sorted(missing))} are not "
                                 "delegated to this cgroup")
    wanted = " ".join(f"+{name}" for name in _V2_CONTROLLERS if name in available)
    try:
        _enable(base, wanted)
    except OSError as exc:
        if exc.errno != errno.EBUSY or not _is_namespace_root():
            raise CgroupsUnavailable(f"cgroup v2 at {base}: cannot enable {wanted} for sandboxes ({exc}); "
                                     "run Lambent in a delegated cgroup of its own (systemd: Delegate=yes)") from None
        leaf = base / "init"
        leaf.mkdir(exist_ok=True)
        for pid in (base / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (leaf / "cgroup.procs").write_text(pid)
        _enable(base, wanted)
    parent = base / "lambent"
    parent.mkdir(exist_ok=True)
    _enable(parent, wanted)
    return parent


def _enable(folder: Path, wanted: str) -> None:
    enabled = set((folder / "cgroup.subtree_control").read_text().split())
    if {name.lstrip("+") for name in wanted.split()} <= enabled:
        return
    (folder / "cgroup.subtree_control").write_text(wanted)


def _is_namespace_root() -> bool:
    """This process's v2 cgroup is "/" as it sees it: the root of a cgroup namespace (a container's)."""
    with contextlib.suppress(OSError):
        return "0::/\n" in Path("/proc/self/cgroup").read_text()
    return False
