"""What the benchmark scripts share: processes started and stopped by PID, Redis, the Lambent
processes and their config, CPU accounting from /proc, progress lines.

The scripts run as `.venv/bin/python bench/<name>.py`, so this folder is on sys.path and they
`from common import ...`; a subprocess that imports a script as a module (bench/async.py's RQ
worker) needs this folder on its PYTHONPATH too. Standard library only at import time.
"""

import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

CLK_TCK = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    """Print one line with the wall-clock time in front, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def verdict(ok: bool) -> str:
    """PASS or MISS, against a target."""
    return "PASS" if ok else "MISS"


# -- /proc ---------------------------------------------------------------------------------

def _read_stat(pid: int) -> list[str] | None:
    """Fields #3 (state) onwards of /proc/<pid>/stat, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()    # fields from #3 (state) on


def is_sandbox(pid: int) -> bool:
    """Whether the process runs a Lambent sandbox (bootstrap.py)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"bootstrap.py" in handle.read()
    except OSError:
        return False


def start_time(pid: int) -> int | None:
    """The start time of a live (not zombie) process, or None."""
    stat = _read_stat(pid)
    if stat is None or stat[0] == "Z":
        return None
    return int(stat[19])


def child_pids(parent: int) -> list[int]:
    """The PIDs whose parent is `parent`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None and int(stat[1]) == parent:
                pids.append(int(entry))
    return pids


def descendant_pids(ancestor: int) -> list[int]:
    """The PIDs below `ancestor`, at any depth: a jailed sandbox is a grandchild of bwrap's, not a child."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                parents.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [ancestor]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of one live process, in seconds (0 when it is gone or None)."""
    stat = _read_stat(pid) if pid is not None else None
    if stat is None:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


@dataclass
class CpuSample:
    """CPU seconds so far of labelled processes and their descendants, of this script, and of the machine."""
    processes: dict[str, float]                  # label -> the process's own CPU seconds
    children: dict[str, dict[int, float]]        # label -> its children's CPU seconds by PID
    children_as: dict[str, str]                  # label -> the label its children count under
    own_label: str
    own: float                                   # this script's getrusage (self, or its waited-for children)
    machine: float
    steal: float
    at: float                                    # time.monotonic() when taken

    @classmethod
    def take(cls, pids: Mapping[str, int | None], children_as: Mapping[str, str] | None = None,
             own: tuple[str, int] = ("bench", resource.RUSAGE_SELF)) -> "CpuSample":
        """Sample `pids` (None counts 0), the children of the labels in `children_as`, getrusage(own[1])."""
        children_as = dict(children_as or {})
        at = time.monotonic()
        usage = resource.getrusage(own[1])
        machine, steal = machine_cpu()
        return cls(processes={label: cpu_seconds(pid) for label, pid in pids.items()},
                   children={label: {child: cpu_seconds(child) for child in descendant_pids(pid)}
                             for label, pid in pids.items() if label in children_as and pid is not None},
                   children_as=children_as, own_label=own[0], own=usage.ru_utime + usage.ru_stime,
                   machine=machine, steal=steal, at=at)

    def minus(self, before: "CpuSample") -> dict[str, float]:
        """CPU seconds in between by label, in the order sampled (a child's label right after its parent's)."""
        used: dict[str, float] = {}
        for label, seconds in self.processes.items():
            used[label] = used.get(label, 0.0) + seconds - before.processes.get(label, 0.0)
            if label in self.children_as:
                was = before.children.get(label, {})
                kids = sum(value - was.get(pid, 0.0) for pid, value in self.children.get(label, {}).items())
                kid_label = self.children_as[label]
                used[kid_label] = used.get(kid_label, 0.0) + kids
        used[self.own_label] = self.own - before.own
        return used

    def noise(self, before: "CpuSample", used: Mapping[str, float]) -> dict[str, float]:
        """CPU seconds in between of the rest of the machine ('others', beyond `used`) and of the hypervisor."""
        others = max(0.0, self.machine - before.machine - sum(used.values()))
        return {"others": others, "steal": self.steal - before.steal}


# -- processes -----------------------------------------------------------------------------

class Processes:
    """Every process this script starts; `stop_all` ends them by PID (TERM, then KILL)."""

    def __init__(self, stop_timeout: float = 10.0, all_children: bool = False) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self.started: list[int] = []           # every PID ever started (for cleanup of worker keys)
        self.stop_timeout = stop_timeout       # TERM, then this long before KILL
        self.all_children = all_children       # on stop, also every child left behind, not only sandboxes

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Popen in a session of its own, remembered for `stop_all`."""
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self._procs.append(proc)
        self.started.append(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """TERM (then KILL) one process, then KILL its sandboxes (or all children) that outlive it."""
        # Its children are ours too: noted with their start time, so that a PID reused by some other
        # process is never touched.
        children = [(pid, start) for pid in child_pids(proc.pid)
                    if (self.all_children or is_sandbox(pid)) and (start := start_time(pid)) is not None]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # Sandboxes exit by themselves when their pipe closes; kill any that did not, by PID.
        deadline = time.monotonic() + 2.0
        for pid, start in children:
            while start_time(pid) == start and time.monotonic() < deadline:
                time.sleep(0.02)
            if start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every process still running, the last started first."""
        for proc in reversed(list(self._procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep going: every process must be stopped
                print(f"warning: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def discard_workdir(workdir: Path, keep: bool) -> None:
    """Remove the temporary folder, or say where it was kept (--keep)."""
    if keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def run_main(main: Callable[[], int]) -> None:
    """Exit with main()'s code; a RuntimeError or timeout is one line on stderr and exit 1."""
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.TimeoutExpired) as exc:   # processes were stopped in main's finally
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


# -- Redis and Lambent ---------------------------------------------------------------------

def masked(url: str) -> str:
    """A Redis URL with its password replaced by ***, for what the benchmarks print."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", url)


def private_file(path: Path, text: str) -> Path:
    """Write `path` with mode 0600 from the start (never readable by others, not even briefly)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def redis_cli(url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `redis-cli` against `url`: the password goes in REDISCLI_AUTH, never argv."""
    parts = urlsplit(url)
    argv = ["redis-cli", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
            "-n", (parts.path or "/0").lstrip("/") or "0", *args]
    env = dict(os.environ)
    if parts.password is not None:
        env["REDISCLI_AUTH"] = unquote(parts.password)
    if parts.username:
        argv[1:1] = ["--user", unquote(parts.username)]
    return argv, env


def start_redis(procs: Processes, workdir: Path) -> tuple[str, int]:
    """A redis-server of its own on a free port, without persistence, with a password of its own (in a config
    file of mode 0600, not on its command line); its URL (with the password) and PID once it answers."""
    import redis
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: pass --redis-url or install it")
    port = free_port()
    log_file = workdir / "redis.log"
    password = secrets.token_hex(32)
    conf = private_file(workdir / "redis.conf", f"requirepass {password}\n")
    proc = procs.start(["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir),
                        "--logfile", str(log_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{tail(log_file)}")
        try:
            if redis.Redis.from_url(url, socket_timeout=1).ping():
                return url, proc.pid
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not answer within 10 s")


def use_redis(procs: Processes, workdir: Path, redis_url: str | None) -> tuple[str, int | None]:
    """`redis_url` as given (no PID), or a redis-server of its own started now."""
    if redis_url:
        return redis_url, None
    url, pid = start_redis(procs, workdir)
    progress(f"redis-server started at {masked(url)} (pid {pid})")
    return url, pid


def write_config(workdir: Path, redis_url: str, sections: Mapping[str, Any]) -> Path:
    """workdir/config.yaml (as JSON, which is YAML): Redis, functions/ and data/ in workdir, plus `sections`."""
    config_file = private_file(workdir / "config.yaml", "")     # it holds the Redis password
    config_file.write_text(json.dumps({"redis_url": redis_url, "functions_dir": str(workdir / "functions"),
                                       "data_dir": str(workdir / "data"), **sections}, indent=2))
    return config_file


def admin_headers(config_file: Path) -> dict[str, str]:
    """The Authorization header with the admin key the gateway of `config_file` generated in its data dir
    (runtime/admin_key.py): the reads and deletes a benchmark makes need a key, as any caller's."""
    data_dir = Path(json.loads(config_file.read_text())["data_dir"])
    return {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}


def lambent_env(config_file: Path) -> dict[str, str]:
    """This environment without LAMBENT_* overrides, and LAMBENT_CONFIG: the config file alone decides."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LAMBENT_")}
    env["LAMBENT_CONFIG"] = str(config_file)
    return env


def start_runtime(procs: Processes, command: str, log_file: Path, env: dict[str, str],
                  cwd: Path) -> subprocess.Popen[bytes]:
    """`python -m runtime <command>` (serve, worker, scheduler), its output appended to `log_file`."""
    with open(log_file, "ab") as log:
        return procs.start([sys.executable, "-m", "runtime", command], stdout=log, stderr=subprocess.STDOUT,
                           env=env, cwd=str(cwd))


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log_file: Path, deadline_s: float = 30.0) -> None:
    """Poll GET {base}/healthz until 200; an error if the process exits or the deadline passes."""
    import httpx
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was healthy:\n{tail(log_file)}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not healthy after {deadline_s:.0f} s:\n{tail(log_file)}")


# -- py-spy ----------------------------------------------------------------------------------

def py_spy_path() -> Path | None:
    """py-spy next to this interpreter, else on PATH, else None."""
    spy = Path(sys.executable).parent / "py-spy"
    if spy.exists():
        return spy
    found = shutil.which("py-spy")
    return Path(found) if found else None


def collapsed_stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, sample count) of each line of py-spy's raw (collapsed) output, root frame first."""
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack.split(";"), int(count_text)
