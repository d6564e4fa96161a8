"""`lambent up`: every role on this machine in one supervised process tree, plus a local Redis if needed.

Each role is a child process running `lambent <role>`; one that dies is restarted with backoff.
Ctrl-C (or SIGTERM) stops intake, then the roles, then the Redis this command started.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import click
import redis

from . import admin_key
from .config import Config
from .preflight import KafkaUnfit, check_kafka
from .redis_url import authentication_failed, has_password, masked, with_password

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PASSWORD_FILE = "password"              # in data_dir/redis: the password of the Redis `lambent up` starts
STOP_GRACE_S = 15.0
STOP_MARGIN_S = 5.0                     # `worker --concurrency N` waits this past the workers' own grace
DUPLICATE_SIGNAL_S = 1.0                # a second signal sooner than this is the same request (a terminal's
                                        # Ctrl-C reaches the whole process group)
FORCED_KILL_S = 2.0                     # after a second signal: passed on, then SIGKILL to what still runs


@dataclass(kw_only=True)
class Role:
    name: str
    argv: list[str]
    detail: str = ""
    restart: bool = True               # restart when it exits (False: it is done when it exits)
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = 1.0
    restart_at: float | None = None
    restarts: int = field(default=0)


def say(message: str) -> None:
    click.echo(f"lambent up: {message}", err=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _probe(url: str) -> tuple[str, str]:
    """("ok", "") when `url` answers PING, ("auth", Redis's answer) when that Redis refuses our credentials,
    else ("down", why)."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            return ("ok", "") if client.ping() else ("down", "no PONG")
        finally:
            client.close()
    except redis.AuthenticationError as exc:
        return "auth", str(exc)
    except (redis.RedisError, OSError, ValueError) as exc:
        return "down", str(exc)


def _reachable(url: str) -> bool:
    return _probe(url)[0] == "ok"


def _private_file(path: Path, text: str) -> None:
    """Write `path` with mode 0600 from the start (never readable by others, not even briefly)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def redis_password(folder: Path) -> str:
    """The password of the Redis that `lambent up` starts: made on the first start, kept in folder/password
    (mode 0600) and reused on every later start."""
    path = folder / PASSWORD_FILE
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if re.fullmatch(r"[0-9a-f]{32,}", password):
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)
        return password
    password = secrets.token_hex(32)
    _private_file(path, password + "\n")
    return password


def ensure_redis(config: Config) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The Redis URL to use; starts redis-server on loopback (append-only, noeviction, a password of its own)
    when none answers. The URL it returns carries that password; what it says shows it masked."""
    url = config.redis_url
    folder = (config.data_dir / "redis").resolve()
    state, reason = _probe(url)
    if state == "ok":
        say(f"redis      using {masked(url)}")
        return url, None
    parsed = urlparse(url)
    if state == "auth":
        # A Redis this command started before (still running after a crash) has our stored password.
        stored = folder / PASSWORD_FILE
        if not has_password(url) and parsed.hostname in _LOOPBACK and stored.is_file():
            ours = with_password(url, redis_password(folder))
            if _reachable(ours):
                say(f"redis      using {masked(ours)} (the password in {stored})")
                return ours, None
        raise click.ClickException(authentication_failed(url, reason))
    if parsed.hostname not in _LOOPBACK:
        raise click.ClickException(f"Redis is not reachable at {masked(url)}; start it or fix redis_url / "
                                   "LAMBENT_REDIS_URL")
    binary = shutil.which("redis-server")
    if binary is None:
        raise click.ClickException(
            f"Redis is not reachable at {masked(url)} and redis-server is not installed: "
            "run `apt-get install -y redis-server` (or `make up`, which installs it)")
    port = parsed.port or 6379
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    except OSError:
        port = free_port()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = redis_password(folder)
    # The password reaches redis-server in a config file (mode 0600), never on its command line (ps shows that).
    server_config = folder / "redis.conf"
    _private_file(server_config, f"requirepass {password}\n")
    process = subprocess.Popen(
        [binary, str(server_config), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
         "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--save", "",
         "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = with_password(f"redis://127.0.0.1:{port}/{(parsed.path or '/0').lstrip('/') or '0'}", password)
    deadline = time.monotonic() + 10.0
    while not _reachable(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise click.ClickException(f"redis-server did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    say(f"redis      pid {process.pid:<7} {masked(url)} (started here, data in {folder}, "
        f"password in {folder / PASSWORD_FILE})")
    return url, process


def roles_for(config: Config, *, config_path: str | None, host: str | None, port: int | None) -> list[Role]:
    base = [sys.executable, "-m", "runtime"]
    with_config = ["--config", config_path] if config_path else []
    serve = [*base, "serve", *with_config]
    if host:
        serve += ["--host", host]
    if port is not None:
        serve += ["--port", str(port)]
    address = f"http://{host or config.gateway.host}:{config.gateway.port if port is None else port}"
    roles = [Role(name="gateway", argv=serve, detail=address),
             Role(name="worker", argv=[*base, "worker", *with_config], detail=f"queue {config.async_.queue}"),
             Role(name="scheduler", argv=[*base, "scheduler", *with_config], detail="cron and rate schedules")]
    sources = [f"kafka {config.kafka_bootstrap_servers}"] if config.kafka_bootstrap_servers else []
    sources += [f"sqs {config.sqs.endpoint_url}"] if config.sqs.endpoint_url else []
    if sources:
        roles.append(Role(name="streams", argv=[*base, "streams", *with_config], detail=", ".join(sources)))
    else:
        say("streams    not started: neither kafka_bootstrap_servers nor sqs.endpoint_url is configured")
    return roles


def _start(role: Role, env: dict[str, str]) -> None:
    role.process = subprocess.Popen(role.argv, env=env)
    role.started = time.monotonic()
    role.restart_at = None
    say(f"{role.name:<10} pid {role.process.pid:<7} {role.detail}")


def run_all(config: Config, *, config_path: str | None, host: str | None, port: int | None) -> int:
    if not any(key.role == "admin" for key in config.auth.keys):
        _, path, created = admin_key.ensure(config.data_dir)
        say(f"admin key  {'generated in' if created else 'in'} {path} (mode 0600): the lambent CLI on this host "
            "reads it by itself; `lambent console` prints the console's address with it")
    if config.kafka_bootstrap_servers:
        # Kafka's credentials reach the roles as they reach this command (kafka_sasl, LAMBENT_KAFKA_SASL__*;
        # scripts/up.sh sets them for the Kafka it starts): refused now, not by a streams role restarted forever.
        try:
            check_kafka(config)
        except KafkaUnfit as exc:
            raise click.ClickException(str(exc)) from None
    redis_url, redis_process = ensure_redis(config)
    env = {**os.environ, "LAMBENT_REDIS_URL": redis_url}
    # Each role stops within its own grace (the gateway's uvicorn within 10 s); the longest one, and a margin.
    grace_s = max(STOP_GRACE_S, config.async_.shutdown_grace_s, config.streams.shutdown_grace_s,
                  config.scheduler.shutdown_grace_s) + STOP_MARGIN_S
    try:
        return supervise(roles_for(config, config_path=config_path, host=host, port=port), env=env,
                         stop_grace_s=grace_s)
    finally:
        _stop_redis(redis_process)


def supervise(roles: list[Role], *, env: dict[str, str], stop_grace_s: float = STOP_GRACE_S) -> int:
    """Run the roles, restarting those that die, until Ctrl-C / SIGTERM or every one-shot role is done.
    Then each role gets SIGTERM and `stop_grace_s` to exit before it is killed; a second Ctrl-C / SIGTERM is
    passed on (a role stops at once on its second) and what still runs FORCED_KILL_S later is killed.
    Returns 1 when a one-shot role failed or the stop was forced, else 0."""
    signals: list[float] = []           # when each SIGINT / SIGTERM came (monotonic); the handler only notes it

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(time.monotonic())

    def forced() -> bool:
        return any(later - signals[0] >= DUPLICATE_SIGNAL_S for later in signals[1:])

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    failed = False
    try:
        for role in roles:
            _start(role, env)
        say("running; Ctrl-C stops every role")
        while not signals:
            time.sleep(0.2)
            now = time.monotonic()
            for role in roles:
                if role.process is not None and role.process.poll() is not None and not signals:
                    code = role.process.returncode
                    role.process = None
                    if not role.restart:
                        failed |= code != 0
                        say(f"{role.name} finished ({_exit(code)})")
                        continue
                    if now - role.started > 60:
                        role.backoff_s = 1.0
                    role.restart_at = now + role.backoff_s
                    say(f"{role.name} exited ({_exit(code)}); restarting in {role.backoff_s:.0f} s")
                    role.backoff_s = min(role.backoff_s * 2, 30.0)
                if role.process is None and role.restart_at is not None and now >= role.restart_at:
                    role.restarts += 1
                    _start(role, env)
            if all(role.process is None and role.restart_at is None for role in roles):
                break
    finally:
        clean = _stop(roles, grace_s=stop_grace_s, forced=forced)
    return 1 if failed or not clean else 0


def _stop(roles: list[Role], *, grace_s: float, forced: Callable[[], bool]) -> bool:
    """SIGTERM to every running role; SIGKILL to those still running after `grace_s`, or FORCED_KILL_S after
    `forced()` (when their SIGTERM is sent again). Returns whether the stop was clean (not forced, no kill)."""
    # A role may have stopped already, on the terminal's Ctrl-C that reached the whole group: reported all the same.
    started = [role for role in roles if role.process is not None]
    running = [role for role in started if role.process is not None and role.process.poll() is None]
    if started:
        say("stopping")
    _signal_all(running, signal.SIGTERM)
    sent = time.monotonic()
    deadline = sent + grace_s
    passed_on = False
    killed: set[str] = set()            # the names of the roles killed for not stopping in time
    left = list(running)
    while left:
        left = [role for role in left if role.process is not None and role.process.poll() is None]
        now = time.monotonic()
        # Passed on no sooner than the roles take it for a second request rather than the same one.
        if left and forced() and not passed_on and now - sent > DUPLICATE_SIGNAL_S:
            say(f"second stop request: passed on; what still runs in {FORCED_KILL_S:.0f} s is killed")
            _signal_all(left, signal.SIGTERM)
            passed_on = True
            deadline = min(deadline, now + FORCED_KILL_S)
        if left and now >= deadline:
            for role in left:
                assert role.process is not None
                say(f"{role.name} did not stop in time; killing it")
                role.process.kill()
                role.process.wait()
            killed = {role.name for role in left}
            break
        time.sleep(0.05)
    for role in started:
        assert role.process is not None
        say(f"{role.name:<10} {_ending(role.process.wait(), killed=role.name in killed)}")
    return not passed_on and not killed


def _ending(code: int, *, killed: bool) -> str:
    """How a role ended once it was asked to stop: "stopped" when it did as asked (exit 0, or the SIGTERM or
    the terminal's SIGINT that it was sent: uvicorn re-raises the signal once it has shut down cleanly), else
    what happened instead."""
    if killed:
        return "killed (SIGKILL): it did not stop in time"
    if code in (0, -signal.SIGTERM, -signal.SIGINT):
        return "stopped"
    return f"stopped ({_exit(code)})"


def _exit(code: int) -> str:
    """A process's return code as words: "exit 3", or "signal SIGSEGV" for a death by signal."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def _signal_all(roles: list[Role], signum: int) -> None:
    for role in roles:
        if role.process is not None and role.process.poll() is None:
            role.process.send_signal(signum)


def _stop_redis(redis_process: subprocess.Popen[bytes] | None) -> None:
    if redis_process is None:
        return
    redis_process.terminate()
    try:
        redis_process.wait(10)
    except subprocess.TimeoutExpired:
        redis_process.kill()
    say("redis      stopped")
