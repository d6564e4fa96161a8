"""The `lambent` command: invoke, functions, up; errors are one line without a traceback."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from .helpers import EXAMPLE_FUNCTIONS, Gateway, free_port, wait_until


def lambent(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("LAMBENT_")}
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=timeout, cwd=cwd)


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


def test_up_starts_redis_when_none_answers_then_the_gateway_and_stops_cleanly(tmp_path: Path) -> None:
    redis_port, http_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "redis_url": f"redis://127.0.0.1:{redis_port}/0", "functions_dir": str(EXAMPLE_FUNCTIONS),
        "data_dir": str(tmp_path / "data"), "gateway": {"host": "127.0.0.1", "port": http_port}}))
    clean = {key: value for key, value in os.environ.items() if not key.startswith("LAMBENT_")}
    process = subprocess.Popen([sys.executable, "-m", "runtime", "up", "--config", str(config)],
                               env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        def answers() -> bool:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
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
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)      # the group this test started: `up` and its roles
            process.wait()
    assert process.returncode == 0
    assert "started here" in output and "gateway" in output
    assert "gateway    stopped" in output
    # each role stops by itself, though it had the terminal's SIGINT and then `up`'s SIGTERM
    assert "worker     stopped (exit 0)" in output and "scheduler  stopped (exit 0)" in output, output[-3000:]
    assert "redis      stopped" in output
    password = (tmp_path / "data" / "redis" / "password").read_text().strip()   # its Redis needs a password
    assert len(password) == 64 and password not in output                     # never shown
    assert f"admin key  generated in {key}" in output and key.read_text().strip() not in output
