"""The platform's Redis needs a password: functions share the host's network, so anyone who reaches Redis
without one could rewrite the catalog, the queues and the DLQ.

Real processes throughout: scripts/redis.sh, `lambent up`'s redis-server, a redis-server without a password,
`python -m runtime <role>`. Every process a test starts is stopped by PID, even when the test fails.
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import click
import pytest
import redis
import yaml

from runtime.config import Config
from runtime.redis_url import masked
from runtime.preflight import check_redis
from runtime.supervisor import _stop_redis, ensure_redis

from .helpers import ROOT, TEST_FUNCTIONS, clean_env, free_port, start_gateway, wait_until
from .helpers import redis_answers as answers

WARNING = "accepts clients without a password"
REDIS_SH = ROOT / "scripts" / "redis.sh"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def anonymous(url: str) -> redis.Redis:
    """A client of the same host, port and database as `url`, without user name or password."""
    kwargs = redis.connection.parse_url(url)
    return redis.Redis(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0), socket_timeout=5)


def refuses(client: redis.Redis) -> bool:
    """PING is refused for want of (the right) password: AuthenticationError, or a NOAUTH ResponseError."""
    try:
        client.ping()
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc)
    finally:
        client.close()
    return False


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.fixture
def open_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server without a password on a free loopback port (as a careless operator might run one)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is installed by make test"
    port = free_port()
    folder = tmp_path / "open-redis"
    folder.mkdir()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
                                "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"

    def up() -> bool:
        assert process.poll() is None, f"redis-server exited with {process.returncode}"
        return answers(url)

    try:
        wait_until(up, timeout=10, message="the redis-server without a password to answer")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def with_wrong_password(url: str) -> str:
    kwargs = redis.connection.parse_url(url)
    return f"redis://:{'0' * 64}@{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def run_role(tmp_path: Path, role: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    """`python -m runtime ROLE` with a config pointing at `redis_url`; it is expected to exit by itself."""
    config = tmp_path / f"{role}.yaml"
    config.write_text(yaml.safe_dump({"redis_url": redis_url, "functions_dir": str(TEST_FUNCTIONS),
                                      "data_dir": str(tmp_path / "data"), "kafka_bootstrap_servers": "127.0.0.1:1",
                                      "gateway": {"host": "127.0.0.1", "port": free_port()}}))
    return subprocess.run([sys.executable, "-m", "runtime", role], env=clean_env({"LAMBENT_CONFIG": str(config)}),
                          cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


# -- the test Redis (scripts/redis.sh, started by scripts/test.sh) -----------------------------------------

def test_the_test_redis_refuses_a_client_without_the_password(redis_base_url: str) -> None:
    kwargs = redis.connection.parse_url(redis_base_url)
    assert re.fullmatch(r"[0-9a-f]{64}", kwargs.get("password") or ""), masked(redis_base_url)
    assert refuses(anonymous(redis_base_url))
    assert refuses(redis.Redis.from_url(with_wrong_password(redis_base_url), socket_timeout=5))
    assert answers(redis_base_url)


def test_redis_sh_keeps_its_password_in_a_0600_file_off_the_command_line_and_reuses_it(tmp_path: Path) -> None:
    state = tmp_path / "state"

    def redis_sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REDIS_SH), command, str(state)], capture_output=True, text=True, timeout=60)

    try:
        started = redis_sh("start")
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip()
        match = re.fullmatch(r"redis://:([0-9a-f]{64})@127\.0\.0\.1:(\d+)/0", url)
        assert match, masked(url)
        password = match.group(1)
        # The password file, the server's config file and the URL file: mode 0600, from the start.
        assert (state / "redis.password").read_text().strip() == password
        for name in ("redis.password", "redis.conf", "redis.url"):
            assert mode(state / name) == 0o600, name
        assert (state / "redis.conf").read_text().split() == ["requirepass", password]
        pid = int((state / "redis.pid").read_text())
        assert b"redis-server" in cmdline(pid) and password.encode() not in cmdline(pid)   # not visible to ps
        assert password not in started.stderr and ":***@127.0.0.1:" in started.stderr       # logs mask it
        assert refuses(anonymous(url))
        assert answers(url)
        # is_running (PING with REDISCLI_AUTH) recognises it: `url` answers, `start` reuses the same server.
        assert redis_sh("url").stdout.strip() == url
        again = redis_sh("start")
        assert again.returncode == 0 and again.stdout.strip() == url and "starting" not in again.stderr
        assert int((state / "redis.pid").read_text()) == pid
        # Stopped and started again: the same password (the port may differ).
        assert redis_sh("stop").returncode == 0
        restarted = redis_sh("start")
        assert restarted.returncode == 0, restarted.stderr
        assert f":{password}@" in restarted.stdout
        assert mode(state / "redis.password") == 0o600
    finally:
        redis_sh("stop")


def test_the_scripts_mask_a_password_in_what_they_log() -> None:
    done = subprocess.run(["bash", "-c", 'source scripts/lib.sh && mask_url "$1" && mask_url "$2"', "mask",
                           "redis://:s3cret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert done.stdout.splitlines() == ["redis://:***@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"]
    assert 'mask_url "$LAMBENT_TEST_REDIS_URL"' in (ROOT / "scripts" / "test.sh").read_text()


# -- the roles' check_redis ----------------------------------------------------------------------------------

def test_a_role_pointed_at_a_redis_without_a_password_warns_why_it_matters(tmp_path: Path, open_redis: str) -> None:
    gateway = start_gateway(tmp_path / "node", open_redis)
    try:
        line = wait_until(lambda: next((line for line in gateway.log().splitlines() if WARNING in line), ""),
                          timeout=10, message="the warning about a Redis without a password")
        assert "WARNING" in line
        for words in ("sandbox", "share the host network", "catalog", "queues", "DLQ", "another function",
                      "requirepass", "redis://:PASSWORD@host:port/0"):
            assert words in line, words
        assert gateway.invoke("echo", {"k": 1}).status_code == 200    # a warning: the role runs
    finally:
        gateway.stop()


def test_check_redis_warns_only_when_a_client_without_a_password_gets_in(
        open_redis: str, redis_base_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime.preflight"):
        check_redis(open_redis)
    assert any(WARNING in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runtime.preflight"):
        check_redis(redis_base_url)                  # the test Redis: it needs its password
    assert not any(WARNING in record.getMessage() for record in caplog.records)
    assert not any(redis.connection.parse_url(redis_base_url)["password"] in record.getMessage()
                   for record in caplog.records)


def test_check_redis_warns_too_when_the_url_has_a_password_this_redis_does_not_need(
        open_redis: str, caplog: pytest.LogCaptureFixture) -> None:
    # redis-py speaks RESP3 (HELLO 3 AUTH default ...), which a Redis without a password accepts with any
    # password: the role gets in, and the check without credentials tells that anyone else does too.
    url = open_redis.replace("redis://", "redis://:not-its-password@")
    with caplog.at_level(logging.WARNING, logger="runtime.preflight"):
        check_redis(url)
    assert any(WARNING in record.getMessage() for record in caplog.records)
    assert not any("not-its-password" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("role", ["serve", "worker", "scheduler", "streams"])
def test_a_role_with_a_wrong_password_exits_with_one_line_about_authentication(
        tmp_path: Path, redis_base_url: str, role: str) -> None:
    wrong = with_wrong_password(redis_base_url)
    done = run_role(tmp_path, role, wrong)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert output.strip().count("\n") == 0, output                 # one line
    assert output.startswith("error: ") and "authentication failed" in output
    assert "refused the password in redis_url" in output and "redis://:PASSWORD@host:port/0" in output
    assert "0" * 64 not in output and redis.connection.parse_url(redis_base_url)["password"] not in output
    assert ":***@" in output                                       # the URL, shown masked


def test_a_role_without_the_password_exits_with_one_line_saying_one_is_needed(
        tmp_path: Path, redis_base_url: str) -> None:
    kwargs = redis.connection.parse_url(redis_base_url)
    done = run_role(tmp_path, "serve", f"redis://{kwargs['host']}:{kwargs['port']}/1")
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output and output.strip().count("\n") == 0, output
    assert "authentication failed" in output and "requires a password and redis_url has none" in output


# -- `lambent up`'s own Redis ---------------------------------------------------------------------------------

def test_lambent_up_starts_redis_with_a_password_kept_in_a_0600_file_and_reuses_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config = Config.model_validate({"redis_url": f"redis://127.0.0.1:{port}/0", "data_dir": str(tmp_path / "data")})
    folder = tmp_path / "data" / "redis"
    first = second = None
    try:
        url, first = ensure_redis(config)
        assert first is not None
        password = (folder / "password").read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", password)
        assert url == f"redis://:{password}@127.0.0.1:{port}/0"        # what every role is handed
        assert mode(folder / "password") == 0o600 and mode(folder / "redis.conf") == 0o600
        assert password.encode() not in cmdline(first.pid)            # in the config file, not argv
        assert refuses(anonymous(url))
        assert answers(url)
        said = capsys.readouterr().err
        assert "started here" in said and ":***@127.0.0.1:" in said and password not in said
        # A second `up` while it still runs (a crash left it behind): the stored password gets it in.
        again, none = ensure_redis(config)
        assert (again, none) == (url, None)
        assert password not in capsys.readouterr().err
        _stop_redis(first)
        first = None
        # Started again: the same password, from the file.
        url2, second = ensure_redis(config)
        assert second is not None and f":{password}@" in url2
        assert (folder / "password").read_text().strip() == password and mode(folder / "password") == 0o600
    finally:
        _stop_redis(first)
        _stop_redis(second)


def test_lambent_up_fails_clearly_on_a_wrong_password(tmp_path: Path, redis_base_url: str) -> None:
    config = Config.model_validate({"redis_url": with_wrong_password(redis_base_url),
                                    "data_dir": str(tmp_path / "data")})
    with pytest.raises(click.ClickException, match="authentication failed") as refused:
        ensure_redis(config)
    assert "0" * 64 not in refused.value.message
    assert not (tmp_path / "data" / "redis").exists()                # no Redis of its own started


def test_masked_hides_every_form_of_password() -> None:
    assert masked("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert masked("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"
    assert masked("rediss://:s%40cret@h/2") == "rediss://:***@h/2"
    assert masked("redis://h:6379/0?password=s3cret&db=1") == "redis://h:6379/0?password=***&db=1"
    assert masked("redis://h:6379/0") == "redis://h:6379/0"
    assert masked("redis://user@h:6379/0") == "redis://user@h:6379/0"
