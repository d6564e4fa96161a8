"""The `lambent` command: invoke, functions, deploy, delete, schedules, up; errors are one line without a traceback."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import redis
import yaml

from runtime import keys

from .helpers import EXAMPLE_FUNCTIONS, Gateway, clean_env, free_port, start_role, wait_until


def lambent(*args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None,
            stdin: int = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """`lambent ARGS` as a script runs it: no terminal on stdin (unless `stdin` is one), whatever runs pytest."""
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True,
                          env=clean_env(env), timeout=timeout, cwd=cwd, stdin=stdin)


def on_a_terminal(*args: str, typed: bytes, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`lambent ARGS` with a terminal (a pty) on stdin, where `typed` was typed ahead (b"\\x04" is Ctrl-D)."""
    leader, follower = pty.openpty()
    try:
        os.write(leader, typed)
        return lambent(*args, env=env, stdin=follower)
    finally:
        os.close(follower)
        os.close(leader)


def function_folder(tmp_path: Path, name: str, files: dict[str, str | bytes] | None = None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "handler.py").write_text("def handler(event, context):\n    return 'ok'\n")
    for file_name, content in (files or {}).items():
        path = folder / file_name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return folder


def table(stdout: str) -> list[dict[str, str]]:
    """The rows of print_table's output keyed by its header, cut at where each header starts (cells may hold
    spaces: `rate(1 hour)`)."""
    header, *lines = stdout.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    return [{name: line[start:end].strip() for name, start, end in zip(names, starts, [*starts[1:], None])}
            for line in lines]


def test_invoke_prints_the_result(gateway: Gateway) -> None:
    done = lambent("invoke", "echo", "--payload", '{"k": 1}', "--url", gateway.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"] == {"k": 1}


def test_invoke_reads_the_payload_from_a_file_and_the_url_from_the_environment(gateway: Gateway,
                                                                              tmp_path: Path) -> None:
    payload = tmp_path / "event.json"
    payload.write_text('{"from": "file"}')
    done = lambent("invoke", "echo", "--payload-file", str(payload), env={"LAMBENT_URL": gateway.url})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"] == {"from": "file"}


def test_invoke_function_error_exits_1_with_one_line(gateway: Gateway) -> None:
    done = lambent("invoke", "fail", "--url", gateway.url)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: function error ValueError: boom: no value"
    assert json.loads(done.stdout)["errorType"] == "ValueError"


def test_invoke_bad_input_and_unknown_function_are_one_line_errors(gateway: Gateway, tmp_path: Path) -> None:
    cases = [
        (("invoke", "echo", "--payload", "{oops", "--url", gateway.url), "the payload is not valid JSON"),
        (("invoke", "nope", "--url", gateway.url), "404 Function not found: nope"),
        (("invoke", "echo", "--payload-file", str(tmp_path / "missing.json"), "--url", gateway.url),
         "cannot read"),
        (("invoke", "echo", "--url", f"http://127.0.0.1:{free_port()}"), "cannot reach Lambent"),
    ]
    for args, expected in cases:
        done = lambent(*args)
        assert done.returncode != 0, args
        assert expected in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_functions_lists_the_catalog(gateway: Gateway) -> None:
    done = lambent("functions", "--url", gateway.url, env=gateway.cli_env())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "HANDLER", "MEMORY", "TIMEOUT", "TRIGGERS"]
    assert any(line.split()[:2] == ["urlecho", "1"] and line.split()[-1] == "http" for line in lines)


def test_bad_configuration_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway: {prot: 1}\n")
    done = lambent("serve", "--config", str(config))
    assert done.returncode == 2
    assert "gateway.prot: unknown key" in done.stderr and str(config) in done.stderr
    assert "Traceback" not in done.stderr


def _kill_the_redis_up_started(log: str) -> None:
    """`up` starts Redis in a session of its own (the terminal's Ctrl-C must not stop it before the roles) and,
    killed, leaves it running for the next `up` to reuse; after a failed run this test stops it, by the PID that
    `up` printed, while that PID is still a redis-server."""
    found = re.search(r"^lambent up: redis +pid (\d+) ", log, flags=re.M)
    if found is None:
        return
    pid = int(found.group(1))
    try:
        if b"redis-server" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):         # it had stopped already: a run that passed
        return


def test_up_starts_redis_when_none_answers_then_the_gateway_and_stops_cleanly(tmp_path: Path) -> None:
    redis_port, http_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "redis_url": f"redis://127.0.0.1:{redis_port}/0", "functions_dir": str(EXAMPLE_FUNCTIONS),
        "data_dir": str(tmp_path / "data"), "gateway": {"host": "127.0.0.1", "port": http_port}}))
    up = start_role("up", tmp_path / "up.log", args=("--config", str(config)), new_session=True)
    process = up.process
    try:
        def answers() -> bool:
            assert process.poll() is None, up.log()
            try:
                response = httpx.post(f"http://127.0.0.1:{http_port}/functions/hello/invoke",
                                      json={"name": "up"}, timeout=2)
                return response.status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60, interval=0.2, message="lambent up to serve hello")
        queued = httpx.post(f"http://127.0.0.1:{http_port}/functions/hello/invoke", json={"name": "later"},
                            headers={"X-Invocation-Type": "Event"}, timeout=5)
        assert queued.status_code == 202
        status_url = f"http://127.0.0.1:{http_port}/invocations/{queued.json()['requestId']}"
        assert httpx.get(status_url, timeout=5).status_code == 401       # a read that holds results needs a key
        key = tmp_path / "data" / "admin.key"                           # which `up` generated, for the operator
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        admin = {"Authorization": f"Bearer {key.read_text().strip()}"}
        done = wait_until(lambda: (s := httpx.get(status_url, headers=admin, timeout=5).json())["status"]
                          == "succeeded" and s, timeout=30,
                          message="the worker started by `up` to run the async invocation")
        listed = lambent("functions", "--url", f"http://127.0.0.1:{http_port}", env={"LAMBENT_CONFIG": str(config)})
        assert listed.returncode == 0 and "hello" in listed.stdout, listed.stderr     # the CLI found the key
        assert done["result"]["message"] == "Hello, later!"
        assert (tmp_path / "data" / "redis" / "appendonlydir").exists()     # durable: append-only
        os.killpg(process.pid, signal.SIGINT)       # Ctrl-C in a terminal: every process of the group gets it
        process.wait(timeout=30)
        output = up.log()
    finally:
        up.kill()                                   # (SIGKILL to the group this test started: `up` and its roles)
        _kill_the_redis_up_started(up.log())
    assert process.returncode == 0
    assert "started here" in output and "gateway" in output
    assert "gateway    stopped" in output
    # each role stops by itself, though it had the terminal's SIGINT and then `up`'s SIGTERM
    lines = output.splitlines()
    assert "lambent up: worker     stopped" in lines and "lambent up: scheduler  stopped" in lines, output[-3000:]
    assert "redis      stopped" in output
    password = (tmp_path / "data" / "redis" / "password").read_text().strip()   # its Redis needs a password
    assert len(password) == 64 and password not in output                     # never shown
    assert f"admin key  generated in {key}" in output and key.read_text().strip() not in output


def test_deploy_says_checking_only_once_the_upload_reached_100_percent(gateway: Gateway, tmp_path: Path) -> None:
    # incompressible, so that the zip goes up in three chunks of 256 KiB
    source = function_folder(tmp_path, "bulky", {"blob.bin": os.urandom(600 * 1024)})
    done = lambent("deploy", str(source), "--url", gateway.url, env=gateway.cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "deployed bulky: new version" in done.stdout
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]    # the bar redraws with \r
    bar = [index for index, line in enumerate(lines) if re.fullmatch(r"\d+% of \d+ bytes", line)]
    percents = [int(lines[index].split("%")[0]) for index in bar]
    assert len(percents) == 3 and percents == sorted(percents) and percents[-1] == 100, lines
    size = int(lines[bar[-1]].split()[2])
    checking = [index for index, line in enumerate(lines) if "; checking, " in line]
    assert checking == [bar[-1] + 1], lines              # once, right after 100 %: the server checks a whole body
    assert lines[checking[0]] == (f"uploaded {size} bytes; checking, installing requirements and importing the "
                                  "handler on the server ...")


def test_schedules_lists_the_fired_late_and_missed_counts(gateway: Gateway, tmp_path: Path) -> None:
    source = function_folder(tmp_path, "ticker", {"function.yaml": yaml.safe_dump(
        {"events": [{"schedule": {"expression": "rate(1 hour)"}}]})})
    assert lambent("deploy", str(source), "--url", gateway.url, env=gateway.cli_env()).returncode == 0
    # given the counters a scheduler wrote (no scheduler runs here: they stay as they are)
    client = redis.Redis.from_url(gateway.redis_url)
    client.hset(keys.schedule_stats("ticker", 0), mapping={"fired": 7, "late": 2, "missed": 3})
    client.close()
    listing = lambent("schedules", "--url", gateway.url, env=gateway.cli_env())
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split("\n")[0].split() == ["FUNCTION", "EXPRESSION", "TIMEZONE", "NEXT", "FIRED", "LATE",
                                                     "MISSED", "LAST", "OUTCOME"]
    [row] = [row for row in table(listing.stdout) if row["FUNCTION"] == "ticker"]
    assert row["EXPRESSION"] == "rate(1 hour)" and (row["FIRED"], row["LATE"], row["MISSED"]) == ("7", "2", "3")
    assert (row["LAST"], row["OUTCOME"]) == ("-", "-")            # never fired
    [api] = [item for item in gateway.request("GET", "/schedules", timeout=5).json()["schedules"]
             if item["function"] == "ticker"]
    assert api["stats"] == {"fired": 7, "late": 2, "missed": 3} and row["NEXT"] == api["next"][0]


def test_delete_and_dlq_purge_refuse_at_once_without_a_terminal_unless_yes(gateway: Gateway) -> None:
    cases = [(("delete", "echo"), "delete function echo and every version of it"),
             (("dlq", "purge", "echo"), "delete every dead letter of echo")]
    for args, action in cases:
        done = lambent(*args, "--url", gateway.url, env=gateway.cli_env())
        assert (done.returncode, done.stdout) == (2, ""), args
        assert done.stderr == f"error: stdin is not a terminal, so no one can confirm: pass --yes to {action}\n"
    assert gateway.invoke("echo", {}).status_code == 200                      # nothing was deleted
    purged = lambent("dlq", "purge", "echo", "-y", "--url", gateway.url, env=gateway.cli_env())
    assert (purged.returncode, purged.stdout) == (0, "purged 0 dead letter(s)\n"), purged.stderr


def test_delete_asks_on_a_terminal_and_anything_but_yes_keeps_the_function(gateway: Gateway,
                                                                           tmp_path: Path) -> None:
    assert lambent("deploy", str(function_folder(tmp_path, "doomed")), "--url", gateway.url,
                   env=gateway.cli_env()).returncode == 0
    env = gateway.cli_env()
    for typed in (b"n\n", b"\n", b"\x04"):                   # no, the default (no), end of input
        kept = on_a_terminal("delete", "doomed", "--url", gateway.url, typed=typed, env=env)
        assert kept.returncode == 1, (typed, kept.stderr)
        assert kept.stdout.startswith("Delete function doomed and every version of it? [y/N]")
        assert kept.stderr.strip() == "not deleted: doomed is unchanged" and "Aborted" not in kept.stdout
    assert gateway.request("GET", "/functions/doomed", timeout=5).status_code == 200
    kept = on_a_terminal("dlq", "purge", "doomed", "--url", gateway.url, typed=b"n\n", env=env)
    assert kept.returncode == 1 and kept.stderr.strip() == "not purged: doomed's dead letters are kept"
    deleted = on_a_terminal("delete", "doomed", "--url", gateway.url, typed=b"y\n", env=env)
    assert deleted.returncode == 0 and deleted.stdout.endswith("deleted doomed\n"), deleted.stderr
    assert gateway.request("GET", "/functions/doomed", timeout=5).status_code == 404
