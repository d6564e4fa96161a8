"""The jail around one sandbox, built with bubblewrap: namespaces, Lambda's filesystem, no privileges.

bwrap runs as root (the server's user) so that it can create the PID, mount, IPC and UTS namespaces
(and a network namespace for `network: none`) without a user namespace; inside, setpriv drops to the
sandbox's own unprivileged uid/gid with no capabilities and no new privileges, and the seccomp filter
is already in force. The process tree is placed in its cgroup by a one-line shell before bwrap starts,
so nothing of the function ever runs outside its limits.

What the sandbox sees, as on Lambda:

  /var/task      the function's code, read-only (the working directory, LAMBDA_TASK_ROOT)
  /opt/python    its dependencies (requirements.txt), read-only
  /var/runtime   the bootstrap and the AWS SDK (boto3, botocore, ...), read-only
  /var/lang      the interpreter and its standard library, read-only (no site-packages)
  /tmp           its own tmpfs of ephemeral_storage_mb
  /usr, /etc/... the host's system files, read-only; /proc of its own PID namespace; a minimal /dev
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .mounts import Slot

TASK_ROOT = "/var/task"
RUNTIME_DIR = "/var/runtime"
LANG_DIR = "/var/lang"
DEPS_DIR = "/opt/python"
SDK_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
# Host files a function may need to resolve names, verify TLS and load shared libraries.
ETC_FILES = ("resolv.conf", "hosts", "nsswitch.conf", "host.conf", "gai.conf", "protocols", "services",
             "localtime", "ssl", "ca-certificates", "ca-certificates.conf", "pki", "ld.so.cache", "ld.so.conf",
             "ld.so.conf.d", "alternatives", "mime.types")
# Lambda's own values for these: the interpreter and the layers come first.
PATH = "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin"
LD_LIBRARY_PATH = "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
_PLACE = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; '
          'exec "$@"')


class JailUnavailable(Exception):
    """This host cannot build the jail; the message names what is missing."""


@dataclass(frozen=True, kw_only=True)
class Interpreter:
    """The sandbox's Python, as the host sees it and as the jail shows it."""
    python: str                 # its path on the host
    prefix: Path                # sys.base_prefix, bound at /var/lang
    executable: str             # its path inside the jail
    hidden: tuple[str, ...]     # site-packages folders under the bound trees, covered with an empty tmpfs
    cache_tag: str              # the name its bytecode files carry (cpython-311)

    @classmethod
    def probe(cls, python: str) -> Interpreter:
        script = ("import json, site, sys, sysconfig; print(json.dumps([sys.base_prefix, sys.executable, "
                  "sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'], site.getsitepackages(), "
                  "sys.implementation.cache_tag]))")
        try:
            out = subprocess.run([python, "-I", "-c", script], capture_output=True, text=True, timeout=30, check=True)
            prefix, executable, purelib, platlib, site_dirs, cache_tag = json.loads(out.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise JailUnavailable(f"cannot run the sandbox interpreter {python}: {exc}") from None
        prefix_path = Path(prefix).resolve()
        real = Path(os.path.realpath(executable))
        try:
            inside = Path(LANG_DIR) / real.relative_to(prefix_path)
        except ValueError:
            inside = Path(LANG_DIR) / "bin" / real.name
        # Every site-packages the server or the interpreter knows of: the server's own code and packages.
        server_sites = [path for path in sys.path if path.endswith(("site-packages", "dist-packages"))]
        hidden = sorted({str(Path(p).resolve()) for p in [purelib, platlib, *site_dirs, *server_sites]
                         if Path(p).is_dir()})
        return cls(python=python, prefix=prefix_path, executable=str(inside), hidden=tuple(hidden),
                   cache_tag=cache_tag)

    def compile(self, source: Path, folder: Path) -> Path:
        """The bytecode of `source` for this interpreter, in `folder` (a jail's /var/runtime/__pycache__), so that
        no sandbox compiles the bootstrap at its start, whether or not the server writes bytecode."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{source.stem}.{self.cache_tag}.pyc"
        script = "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)"
        try:
            subprocess.run([self.python, "-I", "-c", script, str(source), str(target)], capture_output=True,
                           timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise JailUnavailable(f"cannot compile the sandbox's bootstrap with {self.python}: {exc}") from None
        return folder


@dataclass(frozen=True, kw_only=True)
class View:
    """One sandbox's view: the host folders that become /var/task and /opt/python, and its limits.
    A jail started ahead of time binds its slot's folders instead, filled once a function is known."""
    task_root: Path | None
    deps: Path | None
    ephemeral_mb: int
    network: bool
    slot: Slot | None = None


class Bubblewrap:
    """Builds the command line that starts a sandbox process in a fresh jail."""

    def __init__(self, *, bwrap: str, setpriv: str, interpreter: Interpreter, bootstrap: Path, jail_dir: Path,
                 seccomp_filter: Path, uid: int, gid: int) -> None:
        self._bwrap = bwrap
        self._setpriv = setpriv
        self._interpreter = interpreter
        self._uid = uid
        self._gid = gid
        self._seccomp_filter = seccomp_filter
        self._common = self._fixed_arguments(bootstrap, interpreter.compile(bootstrap, jail_dir / "pycache"), jail_dir)

    @classmethod
    def find(cls, *, python: str, bootstrap: Path, jail_dir: Path, seccomp_filter: Path, uid: int,
             gid: int) -> Bubblewrap:
        bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
        if bwrap is None:
            raise JailUnavailable("bubblewrap is not installed (apt-get install -y bubblewrap)")
        if setpriv is None:
            raise JailUnavailable("setpriv is not installed (apt-get install -y util-linux)")
        if os.geteuid() != 0:
            raise JailUnavailable("the server does not run as root, which the jail needs to create namespaces "
                                  "and to hand each sandbox a user of its own")
        jail_dir.mkdir(parents=True, exist_ok=True)
        (jail_dir / "passwd").write_text(f"root:x:0:0:root:/root:/sbin/nologin\n"
                                         f"sbx_user1051:x:{uid}:{gid}::/tmp:/sbin/nologin\n")
        (jail_dir / "group").write_text(f"root:x:0:\nsbx_group:x:{gid}:\n")
        return cls(bwrap=bwrap, setpriv=setpriv, interpreter=Interpreter.probe(python), bootstrap=bootstrap,
                   jail_dir=jail_dir, seccomp_filter=seccomp_filter, uid=uid, gid=gid)

    def _fixed_arguments(self, bootstrap: Path, bytecode: Path, jail_dir: Path) -> list[str]:
        """Everything that is the same for every sandbox of this server: computed once."""
        args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
                "--new-session", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{name}"]
        args += ["--perms", "0755", "--dir", "/var", "--ro-bind", str(self._interpreter.prefix), LANG_DIR]
        bound = {Path("/usr"): Path("/usr"), self._interpreter.prefix: Path(LANG_DIR)}
        for hidden in self._interpreter.hidden:
            for source, target in bound.items():
                if Path(hidden).is_relative_to(source):
                    args += ["--tmpfs", str(target / Path(hidden).relative_to(source))]
        args += ["--perms", "0755", "--dir", RUNTIME_DIR,
                 "--ro-bind", str(bootstrap), f"{RUNTIME_DIR}/bootstrap.py"]
        args += ["--ro-bind", str(bytecode), f"{RUNTIME_DIR}/__pycache__"]
        for source, name in _sdk_locations():
            args += ["--ro-bind", str(source), f"{RUNTIME_DIR}/{name}"]
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        args += ["--ro-bind", str(jail_dir / "passwd"), "/etc/passwd",
                 "--ro-bind", str(jail_dir / "group"), "/etc/group",
                 "--proc", "/proc", "--dev", "/dev", "--perms", "0755", "--dir", "/opt"]
        return args

    def command(self, view: View, *, argv: list[str], cgroup_procs: list[str], seccomp_fd: int) -> list[str]:
        """The full command: place the process in its cgroup, build the jail, drop to the sandbox user."""
        if view.slot is not None:
            args = [*self._common, "--ro-bind", str(view.slot.task), TASK_ROOT,
                    "--ro-bind", str(view.slot.opt), DEPS_DIR]
        else:
            args = [*self._common, "--ro-bind", str(view.task_root), TASK_ROOT]
            if view.deps is not None:
                args += ["--ro-bind", str(view.deps), DEPS_DIR]
            else:
                args += ["--perms", "0755", "--dir", DEPS_DIR]
        if not view.network:
            args.append("--unshare-net")
        args += ["--perms", "1777", "--size", str(view.ephemeral_mb * 1024 * 1024), "--tmpfs", "/tmp",
                 "--chdir", TASK_ROOT, "--remount-ro", "/",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                 "--cap-add", "CAP_SETPCAP", "--seccomp", str(seccomp_fd), "--",
                 self._setpriv, f"--reuid={self._uid}", f"--regid={self._gid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
                 self._interpreter.executable, *argv]
        return ["/bin/sh", "-c", _PLACE, "sh", str(len(cgroup_procs)), *cgroup_procs, self._bwrap, *args]

    def open_filter(self) -> int:
        """A descriptor of the compiled seccomp filter for one bwrap to read (the caller closes it)."""
        return os.open(self._seccomp_filter, os.O_RDONLY | os.O_CLOEXEC)


def _sdk_locations() -> list[tuple[Path, str]]:
    """Where the server's copy of each SDK package is: a folder (a package) or a file (a module)."""
    found = []
    for name in SDK_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if spec.submodule_search_locations:
            found.append((origin.parent, name))
        else:
            found.append((origin, origin.name))
    return found
