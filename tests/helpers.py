"""Test helpers: the one way a test starts a role (`start_role`: `python -m runtime ROLE` with a clean environment,
its config file and log file, waited on until ready, stopped after), the gateway and worker built on it, a Redis of
a test's own, and waiting with a deadline."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, TypeVar

import httpx
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_FUNCTIONS = Path(__file__).resolve().parent / "functions"
EXAMPLE_FUNCTIONS = ROOT / "functions"

# For tests whose functions report through a folder of the host (files a test then reads): a jail hides the
# host's folders from its functions, so these run unjailed. The jail itself is tested in tests/test_jail.py.
UNJAILED: dict[str, Any] = {"sandbox": {"isolation": "none"}}

T = TypeVar("T")
# Each gateway a database of its own; 0 is left alone. Under pytest-xdist (scripts/test.sh runs two workers), the
# test Redis's 15 others are dealt out between the workers, so that one never empties a database the other uses.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_databases = itertools.cycle(range(1 + _WORKER, 16, _WORKERS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T | None | Literal[False]], *, timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy (that value, so never None or False: `wait_until(lambda:
    ready() and value)` is typed as value's type); fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[Any], *, timeout_s: float = 10, group: bool = False) -> None:
    """SIGTERM, and SIGKILL (to its whole process group, with `group`) when it has not exited within `timeout_s`;
    nothing when it has exited already."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_process(process, group=group)


def kill_process(process: subprocess.Popen[Any], *, group: bool = False) -> None:
    """SIGKILL (to its whole process group, with `group`), when it still runs."""
    if process.poll() is None:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()


def fresh_redis_url(base_url: str) -> str:
    """A database of the test Redis, emptied."""
    url = base_url.rsplit("/", 1)[0] + f"/{next(_databases)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any LAMBENT_* (the developer's own settings never reach what a test
    starts), and `extra`."""
    return {**{key: value for key, value in os.environ.items() if not key.startswith("LAMBENT_")}, **(extra or {})}


@dataclass(kw_only=True)
class Role:
    """A `python -m runtime ROLE` process that a test started (start_role), its output in `log_path`."""
    name: str                       # the role: serve, worker, streams, scheduler, up...
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_timeout_s: float = 20
    new_session: bool = False       # a process group of its own (as a terminal's job): kill() ends the whole group

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown, no cleanup, as when a host is lost (to the whole group, with new_session)."""
        kill_process(self.process, group=self.new_session)

    def stop(self) -> None:
        """SIGTERM, and kill() when it has not exited within stop_timeout_s; nothing when it has exited."""
        stop_process(self.process, timeout_s=self.stop_timeout_s, group=self.new_session)


def start_role(role: str, log_path: Path, *, config: Path | dict[str, Any] | None = None, args: Sequence[str] = (),
               env: dict[str, str] | None = None, cwd: Path | None = None,
               ready: Callable[[], object] | str | None = None, ready_timeout_s: float = 60,
               stop_timeout_s: float = 20, new_session: bool = False) -> Role:
    """`python -m runtime ROLE ARGS...`, the one way a test starts a role: in a clean environment (clean_env) with
    LAMBENT_CONFIG=`config` (a dict is written as log_path's folder's config.yaml first) and `env` on top, in `cwd`
    (log_path's folder by default), stdout and stderr appended to `log_path`. When `ready` is given, waits until it
    holds (a line in the log, or a condition), failing with the log if the process exits first, and stopping it
    when it does not become ready. Its owner stops it after the test: Role.stop(), or stop_process(role.process)."""
    folder = log_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(config, dict):
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        config = path
    process_env = clean_env({"LAMBENT_CONFIG": str(config)} if config is not None else {})
    process_env.update(env or {})
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "runtime", role, *args], env=process_env,
                                   cwd=cwd or folder, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=new_session)
    started = Role(name=role, process=process, log_path=log_path, stop_timeout_s=stop_timeout_s,
                   new_session=new_session)
    if ready is not None:
        try:
            wait_ready(started, ready, timeout=ready_timeout_s)
        except BaseException:
            started.stop()
            raise
    return started


def wait_ready(role: Role, ready: Callable[[], object] | str, *, timeout: float = 60) -> None:
    """Wait until `ready` holds (the log has that line, or the condition is truthy); fail at once, with the log,
    when the process exits first."""
    def holds() -> bool:
        if role.process.poll() is not None:
            raise AssertionError(f"`{role.name}` exited with {role.process.returncode}:\n{role.log()}")
        return ready in role.log() if isinstance(ready, str) else bool(ready())

    wait_until(holds, timeout=timeout, interval=0.05, message=f"`{role.name}` to be ready")


@dataclass(kw_only=True)
class Gateway(Role):
    """`lambent serve` on a free loopback port (start_gateway)."""
    url: str
    redis_url: str
    data_dir: Path

    @property
    def config_path(self) -> Path:
        return self.log_path.parent / "config.yaml"

    @property
    def admin_secret(self) -> str | None:
        """The admin key the gateway generated in its data dir (none when the test configures keys)."""
        path = self.data_dir / "admin.key"
        return path.read_text().strip() if path.exists() else None

    def cli_env(self) -> dict[str, str]:
        """For `lambent` commands run on this host: the gateway's config, where the CLI finds its admin key."""
        return {"LAMBENT_CONFIG": str(self.config_path)}

    def client(self, *, anonymous: bool = False, **kwargs: Any) -> httpx.Client:
        """A client of this gateway holding its generated admin key, as the operator's CLI would
        (`anonymous`: none, as any other caller)."""
        secret = None if anonymous else self.admin_secret
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)

    def request(self, method: str, path: str, *, anonymous: bool = False, **kwargs: Any) -> httpx.Response:
        with self.client(anonymous=anonymous) as client:
            return client.request(method, path, **kwargs)

    def invoke(self, name: str, payload: Any = None, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.post(f"/functions/{name}/invoke", json=payload if payload is not None else {}, **kwargs)



def start_gateway(workdir: Path, redis_url: str, *, functions_dir: Path = TEST_FUNCTIONS,
                  config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Gateway:
    """`lambent serve` in `workdir` (its config.yaml, gateway.log and data dir there), once it answers /healthz."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    started = start_role("serve", workdir / "gateway.log", env=env, ready=healthy, ready_timeout_s=30,
                         stop_timeout_s=15, config={
                             "redis_url": redis_url, "functions_dir": str(functions_dir),
                             "data_dir": str(workdir / "data"), **(config or {}),
                             "gateway": {"host": "127.0.0.1", "port": port, **(config or {}).get("gateway", {})}})
    return Gateway(name=started.name, process=started.process, log_path=started.log_path,
                   stop_timeout_s=started.stop_timeout_s, url=url, redis_url=redis_url, data_dir=workdir / "data")


def gateway_with_function(workdir: Path, redis_url: str, name: str, files: dict[str, str]) -> Iterator[Gateway]:
    """A gateway whose functions folder holds one function made of `files` (handler.py, function.yaml,
    requirements.txt...), yielded once it is deployed: a deploy at start-up that installs requirements with pip
    may take a while. The gateway is stopped after, even on error."""
    folder = workdir / "functions" / name
    folder.mkdir(parents=True)
    for file_name, text in files.items():
        (folder / file_name).write_text(text)
    gateway = start_gateway(workdir, redis_url, functions_dir=workdir / "functions")
    try:
        wait_until(lambda: gateway.request("GET", f"/functions/{name}", timeout=5).status_code == 200, timeout=300,
                   interval=0.5, message=f"{name} (with its requirements) to be deployed")
        yield gateway
    finally:
        gateway.stop()


def redis_answers(url: str) -> bool:
    """The Redis at `url` answers PING with these credentials (each wait bounded by 1 s)."""
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


class RedisServer:
    """A redis-server of a test's own on a free loopback port, append-only with every write synced, its password
    in a 0600 config file (never on a command line, where ps shows it): to kill -9, pause, and start again
    on the same port with what its append-only file kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.password = secrets.token_hex(16)
        folder.mkdir(parents=True)
        self.config = folder / "redis.conf"
        self.config.touch(mode=0o600)
        self.config.write_text(f"requirepass {self.password}\n")
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is installed by make test"
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [binary, str(self.config), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
                 "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.answers, timeout=20, message="the test's redis-server to answer")

    def answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "redis-server exited"
        return redis_answers(self.url)

    def client(self, *, timeout_s: float = 5) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def kill(self) -> None:
        """kill -9: no shutdown, as when its host is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(10)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)        # a paused server could not act on SIGTERM
        stop_process(self.process, timeout_s=10)


def start_worker(gateway: Gateway, *, name: str = "worker", args: tuple[str, ...] = ()) -> Role:
    """`lambent worker` with the gateway's configuration (same Redis, same functions), its log NAME.log beside."""
    return start_role("worker", gateway.log_path.parent / f"{name}.log", config=gateway.config_path, args=args)
