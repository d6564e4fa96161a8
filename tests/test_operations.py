"""Day two: Prometheus metrics after known invocations, logs by request id, JSON server logs."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from .helpers import (UNJAILED, Gateway, clean_env, free_port, start_gateway, start_worker, stop_process,
                      wait_until)
from .test_cli import lambent


@pytest.fixture
def fresh(tmp_path: Path, redis_url: str) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path / "node", redis_url, config={"logs": {"format": "json"}, **UNJAILED})
    yield gateway
    gateway.stop()


def samples(text: str) -> dict[str, float]:
    """`name{labels} value` lines of a Prometheus exposition, labels sorted, keyed by the whole series."""
    found = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        match = re.match(r"^([^{]+)(?:\{(.*)\})?$", series)
        assert match, line
        labels = ",".join(sorted(re.findall(r'\w+="[^"]*"', match.group(2) or "")))
        found[f"{match.group(1)}{{{labels}}}"] = float(value)
    return found


def test_metrics_count_known_invocations_exactly(fresh: Gateway) -> None:
    for _ in range(3):
        assert fresh.invoke("echo", {}).status_code == 200
    for _ in range(2):
        assert fresh.invoke("fail", {}).status_code == 500
    text = fresh.request("GET", "/metrics", timeout=5).text
    values = samples(text)
    assert values['lambent_invocations_total{function="echo",outcome="success",trigger="sync",version="$LATEST"}'] == 3
    assert values['lambent_invocations_total{function="fail",outcome="error",trigger="sync",version="$LATEST"}'] == 2
    assert values['lambent_invocation_duration_seconds_count{function="echo",trigger="sync"}'] == 3
    assert values['lambent_sandbox_starts_total{function="echo",kind="cold"}'] == 1
    assert values['lambent_sandbox_starts_total{function="echo",kind="warm"}'] == 2
    assert values['lambent_init_duration_seconds_count{function="echo"}'] == 1
    assert values['lambent_concurrent_executions{function="echo"}'] == 0
    assert values["lambent_async_queue_depth{}"] == 0
    assert values['lambent_dlq_depth{function="echo"}'] == 0
    assert "# TYPE lambent_invocations_total counter" in text
    assert "# TYPE lambent_invocation_duration_seconds histogram" in text


def test_throttles_and_queue_depth_are_counted(fresh: Gateway, tmp_path: Path) -> None:
    import concurrent.futures

    started, release = tmp_path / "started", tmp_path / "release"
    event = {"started": str(started), "release": str(release)}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(fresh.invoke, "limited", event)
        wait_until(started.exists, message="the only slot to be held")
        assert fresh.invoke("limited", event).status_code == 429
        release.touch()
        holder.result()
    for _ in range(2):
        fresh.invoke("echo", {}, headers={"X-Invocation-Type": "Event"})     # no worker: they stay queued
    values = samples(fresh.request("GET", "/metrics", timeout=5).text)
    assert values['lambent_throttles_total{function="limited",trigger="sync"}'] == 1
    assert values["lambent_async_queue_depth{}"] == 2
    assert values["lambent_async_oldest_event_age_seconds{}"] >= 0


def test_worker_processes_add_up_on_one_metrics_port(fresh: Gateway) -> None:
    port = free_port()
    config_path = fresh.log_path.parent / "config.yaml"
    text = config_path.read_text() + f"metrics:\n  worker_port: {port}\n"
    config_path.write_text(text)
    worker = start_worker(fresh, args=("--concurrency", "2"))
    try:
        ids = [fresh.invoke("echo", {"n": i}, headers={"X-Invocation-Type": "Event"}).json()["requestId"]
               for i in range(6)]
        for request_id in ids:
            wait_until(lambda: fresh.request("GET", f"/invocations/{request_id}", timeout=5).json()["status"]
                       == "succeeded", timeout=30, message="the async invocations")

        key = {"Authorization": f"Bearer {fresh.admin_secret}"}

        def scraped() -> float:
            try:
                values = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", headers=key, timeout=5).text)
            except httpx.TransportError:
                return 0.0
            return values.get('lambent_invocations_total{function="echo",outcome="success",trigger="async",'
                              'version="$LATEST"}', 0.0)

        assert wait_until(lambda: scraped() == 6, timeout=15, message="six async invocations on the port")
        # as the gateway's /metrics, the port needs a key
        refused = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert refused.status_code == 401 and refused.json()["error"] == "MissingAuthenticationTokenException"
        assert "lambent_" not in refused.text
    finally:
        worker.stop()


def test_logs_by_request_id_from_the_api_and_the_cli(fresh: Gateway) -> None:
    first = fresh.invoke("echo", {"which": "first"}).headers["x-request-id"]
    second = fresh.invoke("echo", {"which": "second"}).headers["x-request-id"]

    def records() -> list[dict]:
        answer = fresh.request("GET", "/functions/echo/logs", params={"request_id": second}, timeout=5).json()
        return answer["records"]

    [record] = wait_until(records, message="the second invocation's logs")
    assert record["requestId"] == second and first not in record["text"]
    assert record["text"].startswith(f"START RequestId: {second}")
    done = lambent("logs", "echo", "--request-id", second, "--url", fresh.url, env=fresh.cli_env())
    assert done.returncode == 0
    assert f"END RequestId: {second}" in done.stdout and "REPORT RequestId" in done.stdout
    everything = lambent("logs", "echo", "--since", "10m", "--url", fresh.url, env=fresh.cli_env())
    assert everything.stdout.index(first) < everything.stdout.index(second)        # newest last
    bad = lambent("logs", "echo", "--since", "ten minutes", "--url", fresh.url, env=fresh.cli_env())
    assert bad.returncode == 1 and "30s, 10m, 2h or 1d" in bad.stderr and "Traceback" not in bad.stderr


def test_logs_of_an_unknown_function_are_a_404_and_a_deleted_functions_stay_readable(fresh: Gateway) -> None:
    answer = fresh.request("GET", "/functions/nosuchfn/logs", timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"] == "ResourceNotFound" and answer.json()["message"] == "Function not found: nosuchfn"
    for args in (("logs", "nosuchfn"), ("logs", "nosuchfn", "--follow")):       # --follow does not wait forever
        done = lambent(*args, "--url", fresh.url, env=fresh.cli_env())
        assert (done.returncode, done.stdout, done.stderr) == (1, "", "error: 404 Function not found: nosuchfn\n")
    never_invoked = fresh.request("GET", "/functions/fail/logs", timeout=5)
    assert never_invoked.status_code == 200 and never_invoked.json()["records"] == []

    request_id = fresh.invoke("echo", {"before": "delete"}).headers["x-request-id"]
    wait_until(lambda: fresh.request("GET", "/functions/echo/logs", timeout=5).json()["records"],
               message="echo's logs to be stored")
    assert fresh.request("DELETE", "/functions/echo", timeout=5).status_code == 200
    done = lambent("logs", "echo", "--url", fresh.url, env=fresh.cli_env())
    assert done.returncode == 0 and f"REPORT RequestId: {request_id}" in done.stdout, done.stderr
    filtered = fresh.request("GET", "/functions/echo/logs", params={"request_id": "other"}, timeout=5)
    assert filtered.status_code == 200 and filtered.json()["records"] == []     # known by its logs: no 404


def start_following(args: list[str], out: Path, *, env: dict[str, str],
                    sigint: Any = signal.SIG_DFL) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`lambent logs ... --follow` with its stdout and stderr in files (read without blocking), started with
    SIGINT's disposition `sigint`: SIG_IGN is how a background job of a non-interactive shell starts (`make
    test &`, some CI runners), and how the old CLI, which relied on Python's default handler, outlived Ctrl-C."""
    stdout, stderr = out / "follow.out", out / "follow.err"
    with open(stdout, "wb") as out_file, open(stderr, "wb") as err_file:
        process = subprocess.Popen([sys.executable, "-m", "runtime", "logs", *args, "--follow"],
                                   stdout=out_file, stderr=err_file, env=env,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    return process, stdout, stderr


def assert_ctrl_c_ends_it_quietly(process: subprocess.Popen[bytes], stderr: Path) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("`lambent logs --follow` still running 10 s after SIGINT") from None
    assert process.returncode == 0          # Ctrl-C is --follow's normal end
    assert stderr.read_text() == ""         # no traceback, no `Aborted!`


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"])
def test_logs_follow_prints_new_invocations_until_ctrl_c(fresh: Gateway, tmp_path: Path, sigint: Any) -> None:
    env = clean_env(fresh.cli_env())
    process, stdout, stderr = start_following(["echo", "--url", fresh.url], tmp_path, env=env, sigint=sigint)
    try:
        request_id = fresh.invoke("echo", {"followed": True}).headers["x-request-id"]
        # once it has printed, it is in its loop (Ctrl-C is taken before the first request)
        wait_until(lambda: f"REPORT RequestId: {request_id}" in stdout.read_text(), timeout=30,
                   message="the followed invocation's REPORT line")
        assert_ctrl_c_ends_it_quietly(process, stderr)
    finally:
        stop_process(process)


def test_ctrl_c_ends_logs_follow_quietly_while_its_request_is_in_flight(tmp_path: Path) -> None:
    env = clean_env()
    with socket.create_server(("127.0.0.1", 0)) as server:        # takes the request, never answers
        server.settimeout(30)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        process, _, stderr = start_following(["echo", "--url", url, "--secret", "unused"], tmp_path, env=env)
        try:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(30)
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(4096)
                    assert chunk, "the CLI closed its connection before sending its request"
                    received += chunk
                assert received.startswith(b"GET /functions/echo/logs")
                assert_ctrl_c_ends_it_quietly(process, stderr)
        finally:
            stop_process(process)


def test_server_logs_are_json_lines_with_structured_fields(fresh: Gateway) -> None:
    request_id = fresh.invoke("echo", {}).headers["x-request-id"]

    def invocation_line() -> dict[str, Any] | None:
        for line in fresh.log().splitlines():
            if line.startswith("{") and (entry := json.loads(line)).get("request_id") == request_id:
                return entry
        return None

    # routine lines are written in batches (up to 50 ms after they are logged)
    wanted = wait_until(invocation_line, message="the invocation's line in the server log")
    assert wanted["function"] == "echo" and wanted["version"] == "$LATEST" and wanted["trigger"] == "sync"
    assert wanted["attempt"] == 1
    assert wanted["level"] == "INFO" and "START RequestId" in wanted["logs"]
