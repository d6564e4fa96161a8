"""Asynchronous invocation: 202 once in Redis, retries, DLQ records, destinations, throttles, lost workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import signal
import sys
import time
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import boto3
import orjson
import pytest
import redis
import rq
from botocore.config import Config as BotoConfig

from runtime.executor.process import SandboxProcess
from runtime.jail import Launch

from .helpers import UNJAILED, Gateway, Role, fresh_redis_url, start_gateway, start_worker, wait_until

# Unjailed: flaky and sleeper report their attempts through a folder of the host.
FAST = {"async": {"lease_s": 1, "queued_check_s": 2, "throttle_delay_s": 0.2, "poll_s": 0.05}, **UNJAILED}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("async"), fresh_redis_url(redis_base_url), config=FAST)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def worker(gateway: Gateway) -> Iterator[Role]:
    process = start_worker(gateway)
    yield process
    process.stop()


def enqueue(gateway: Gateway, name: str, payload: Any) -> str:
    response = gateway.invoke(name, payload, headers={"X-Invocation-Type": "Event"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["requestId"] == response.headers["x-request-id"]
    return str(body["requestId"])


def status(gateway: Gateway, request_id: str) -> dict[str, Any]:
    with gateway.client() as client:
        response = client.get(f"/invocations/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(gateway: Gateway, request_id: str, wanted: str, timeout: float = 20) -> dict[str, Any]:
    return wait_until(lambda: (s := status(gateway, request_id))["status"] == wanted and s, timeout=timeout,
                      message=f"{request_id} to be {wanted}")


def sink_records(gateway: Gateway) -> list[dict[str, Any]]:
    """What the `sink` destination function received, read back from its captured logs."""
    client = redis.Redis.from_url(gateway.redis_url)
    records = []
    for raw in client.lrange("lambent:fn:sink:logs", 0, -1):
        for line in orjson.loads(raw)["text"].splitlines():
            if line.startswith("SINK "):
                records.append(json.loads(line[5:]))
    return records


def test_202_comes_only_once_the_event_is_in_redis(gateway: Gateway) -> None:
    # No worker runs in this test's first half: what the 202 promises is the stored event.
    request_id = enqueue(gateway, "asyncok", {"n": 1})
    stored = redis.Redis.from_url(gateway.redis_url).hgetall(f"lambent:inv:{request_id}")
    assert stored[b"status"] == b"queued" and orjson.loads(stored[b"payload"]) == {"n": 1}
    assert status(gateway, request_id)["status"] == "queued"


def test_async_success_records_the_result_and_calls_on_success(gateway: Gateway, worker: Role) -> None:
    request_id = enqueue(gateway, "asyncok", {"n": 21})
    done = wait_status(gateway, request_id, "succeeded")
    assert done["result"] == {"doubled": 42}
    assert done["attemptCount"] == 1 and done["attempts"][0]["outcome"] == "success"
    record = wait_until(lambda: [r for r in sink_records(gateway)
                                 if r["requestContext"]["requestId"] == request_id],
                        message="the on_success record at the sink")[0]
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["requestPayload"] == {"n": 21}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"doubled": 42}


def test_an_async_invocation_runs_in_the_callers_trace(gateway: Gateway, worker: Role) -> None:
    # given a caller in an X-Ray trace, invoking asynchronously
    root = "1-5759e988-bd862e3fe1be46a994272793"
    response = gateway.invoke("echo", {"traced": True}, headers={
        "X-Invocation-Type": "Event", "X-Amzn-Trace-Id": f"Root={root};Parent=53995c3f42cd8ad8;Sampled=0"})
    assert response.status_code == 202 and response.headers["x-amzn-trace-id"].startswith(f"Root={root};")
    # then the attempt that runs later sees that trace, as on Lambda
    done = wait_status(gateway, response.json()["requestId"], "succeeded")
    assert done["result"]["env"]["_X_AMZN_TRACE_ID"].startswith(f"Root={root};Parent=53995c3f42cd8ad8;")


def test_rq_sees_the_worker_alive_idle_and_counting_jobs(gateway: Gateway, worker: Role) -> None:
    # The worker trims RQ's repeated heartbeats and state writes: `rq info` must still see it as RQ would.
    for n in range(3):
        wait_status(gateway, enqueue(gateway, "asyncok", {"n": n}), "succeeded")
    connection = redis.Redis.from_url(gateway.redis_url)

    def idle_with_jobs() -> Any:
        found = [w for w in rq.Worker.all(connection=connection) if w.pid == worker.process.pid]
        return found[0] if found and found[0].get_state() == "idle" and found[0].successful_job_count >= 3 else None

    seen = wait_until(idle_with_jobs, message="the worker idle in RQ's registry, its jobs counted")
    assert seen.last_heartbeat is not None
    assert connection.ttl(seen.key) > 60            # RQ's worker TTL, renewed by the heartbeat


def test_errors_are_retried_with_the_configured_delays_and_attempt_numbers(
        gateway: Gateway, worker: Role, tmp_path: Path) -> None:
    request_id = enqueue(gateway, "flaky", {"folder": str(tmp_path), "fail_times": 2})
    done = wait_status(gateway, request_id, "succeeded")
    assert done["result"] == {"tries": 3, "attempt": 3}
    attempts = done["attempts"]
    assert [a["outcome"] for a in attempts] == ["error", "error", "success"]
    assert attempts[0]["errorType"] == "RuntimeError"
    starts = sorted(int(name.split("-")[0]) for name in os.listdir(tmp_path))
    gaps = [(later - earlier) / 1e9 for earlier, later in zip(starts, starts[1:])]
    # retry_delays [0.3, 0.6] with 10 % jitter: never earlier than 0.27 s and 0.54 s.
    assert gaps[0] >= 0.27 and gaps[1] >= 0.54, gaps


def test_retries_exhausted_go_to_the_dlq_with_lambdas_record_and_on_failure(
        gateway: Gateway, worker: Role) -> None:
    tag = uuid.uuid4().hex
    request_id = enqueue(gateway, "asyncfail", {"tag": tag})
    done = wait_status(gateway, request_id, "dead-lettered")
    assert done["attemptCount"] == 3
    assert done["error"]["errorType"] == "RuntimeError"
    with gateway.client() as client:
        entry = client.get(f"/functions/asyncfail/dlq/{request_id}").json()
    record = entry["record"]
    assert set(record) == {"version", "timestamp", "requestContext", "requestPayload", "responseContext",
                           "responsePayload"}
    assert record["version"] == "1.0"
    assert record["requestContext"] == {
        "requestId": request_id, "condition": "RetriesExhausted", "approximateInvokeCount": 3,
        "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:asyncfail:$LATEST"}
    assert record["requestPayload"] == {"tag": tag}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST",
                                         "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert record["responsePayload"]["errorMessage"] == f"always fails ({tag})"
    assert [a["outcome"] for a in entry["attempts"]] == ["error", "error", "error"]
    sent = wait_until(lambda: [r for r in sink_records(gateway) if r["requestPayload"] == {"tag": tag}],
                      message="the on_failure record at the sink")
    assert sent[0] == record


def test_a_retry_due_after_the_event_age_dead_letters_with_event_age_exceeded(
        gateway: Gateway, worker: Role) -> None:
    request_id = enqueue(gateway, "agefail", {"k": "v"})
    done = wait_status(gateway, request_id, "dead-lettered")
    assert done["attemptCount"] == 1
    with gateway.client() as client:
        record = client.get(f"/functions/agefail/dlq/{request_id}").json()["record"]
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorType"] == "ValueError"


def test_dlq_lists_pages_redrives_one_and_purges(gateway: Gateway, worker: Role) -> None:
    with gateway.client() as client:
        client.delete("/functions/asyncfail/dlq")
        ids = [enqueue(gateway, "asyncfail", {"tag": f"page-{i}"}) for i in range(3)]
        for request_id in ids:
            wait_status(gateway, request_id, "dead-lettered")
        first = client.get("/functions/asyncfail/dlq", params={"limit": 2}).json()
        second = client.get("/functions/asyncfail/dlq", params={"limit": 2, "offset": first["next"]}).json()
        assert first["total"] == 3 and len(first["items"]) == 2 and second["next"] is None
        assert {item["requestId"] for item in first["items"] + second["items"]} == set(ids)

        redriven = client.post("/functions/asyncfail/dlq/redrive", json={"requestId": ids[0]}).json()
        assert redriven == {"redriven": [ids[0]]}
        assert client.get("/functions/asyncfail/dlq").json()["total"] == 2
        again = wait_until(lambda: (s := status(gateway, ids[0]))["trigger"] == "redrive"
                           and s["status"] == "dead-lettered" and s, message="the redriven event to fail again")
        assert again["attemptCount"] == 3            # fresh attempts, not 6
        assert client.post("/functions/asyncfail/dlq/redrive", json={"requestId": "nope"}).status_code == 404

        assert client.delete("/functions/asyncfail/dlq").json() == {"purged": 3}
        assert client.get("/functions/asyncfail/dlq").json()["total"] == 0


def test_a_redrive_keeps_the_earlier_attempts_in_the_record_and_appends_the_new_ones(
        gateway: Gateway, worker: Role, tmp_path: Path) -> None:
    # given an event that failed its three attempts (flaky fails its first three tries) and was dead-lettered
    request_id = enqueue(gateway, "flaky", {"folder": str(tmp_path), "fail_times": 3})
    dead = wait_status(gateway, request_id, "dead-lettered")
    earlier = dead["attempts"]
    assert [(a["attempt"], a["outcome"], a["errorType"]) for a in earlier] == [
        (1, "error", "RuntimeError"), (2, "error", "RuntimeError"), (3, "error", "RuntimeError")]
    assert [a["errorMessage"] for a in earlier] == [f"failing on purpose, try {n}" for n in (1, 2, 3)]
    with gateway.client() as client:
        letter = client.get(f"/functions/flaky/dlq/{request_id}").json()
        assert set(letter) == {"requestId", "function", "qualifier", "deadLetteredAt", "record", "attempts"}
        assert letter["attempts"] == earlier and letter["record"]["requestContext"]["approximateInvokeCount"] == 3
        # when it is redriven, and its fourth try succeeds
        assert client.post("/functions/flaky/dlq/redrive", json={"requestId": request_id}).json() == {
            "redriven": [request_id]}
    done = wait_status(gateway, request_id, "succeeded")
    # then the record lists the three failed attempts as they were, then the new one, in order
    assert done["trigger"] == "redrive" and done["result"] == {"tries": 4, "attempt": 1}
    assert done["attempts"][:3] == earlier
    [again] = done["attempts"][3:]
    assert again["attempt"] == 1 and again["outcome"] == "success" and "errorType" not in again
    assert again["startedAt"] >= earlier[-1]["endedAt"] and again["endedAt"] >= again["startedAt"]
    assert done["attemptCount"] == 1                     # fresh attempts: the retry budget starts again


def test_redrive_all_puts_every_entry_back(gateway: Gateway, worker: Role) -> None:
    with gateway.client() as client:
        client.delete("/functions/agefail/dlq")
        ids = {enqueue(gateway, "agefail", {"i": i}) for i in range(2)}
        for request_id in ids:
            wait_status(gateway, request_id, "dead-lettered")
        assert set(client.post("/functions/agefail/dlq/redrive").json()["redriven"]) == ids
        for request_id in ids:
            wait_until(lambda: status(gateway, request_id)["trigger"] == "redrive", message="redriven")
        wait_until(lambda: client.get("/functions/agefail/dlq").json()["total"] == 2, message="back in the DLQ")


def test_throttled_events_wait_without_using_attempts(gateway: Gateway, worker: Role, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(gateway.invoke, "limited", {"started": str(started), "release": str(release)})
        wait_until(started.exists, message="the sync call to hold the only slot")
        request_id = enqueue(gateway, "limited", {"started": str(tmp_path / "s2"), "release": str(release)})
        throttled = wait_until(lambda: (s := status(gateway, request_id)).get("nextAttemptAt")
                               and s["status"] == "queued" and s, message="the event to be throttled")
        assert throttled["attemptCount"] == 0
        release.touch()
        assert holder.result().status_code == 200
    done = wait_status(gateway, request_id, "succeeded")
    assert done["attemptCount"] == 1
    assert done["attempts"][0]["outcome"] == "throttled" and done["attempts"][-1]["outcome"] == "success"
    assert done["attempts"][-1]["attempt"] == 1


def test_a_killed_worker_loses_nothing(tmp_path: Path, redis_url: str) -> None:
    # A gateway of its own, so that no other worker can pick the invocation up first.
    gateway = start_gateway(tmp_path / "node", redis_url, config=FAST)
    first = start_worker(gateway, name="doomed")
    second = None
    tmp_path = tmp_path / "starts"
    tmp_path.mkdir()
    try:
        request_id = enqueue(gateway, "sleeper", {"folder": str(tmp_path), "sleep_s": 2})
        wait_until(lambda: os.listdir(tmp_path), message="the handler to start")
        first.process.send_signal(signal.SIGKILL)          # kill -9 mid-invocation
        first.process.wait()
        second = start_worker(gateway, name="survivor")
        done = wait_status(gateway, request_id, "succeeded", timeout=30)
    finally:
        first.kill()
        if second is not None:
            second.stop()
        gateway.stop()
    outcomes = [a["outcome"] for a in done["attempts"]]
    assert outcomes == ["worker_lost", "success"]
    assert done["attemptCount"] == 2 and done["result"] == {"attempt": 2}
    assert sorted(name.split("-")[1] for name in os.listdir(tmp_path)) == ["1", "2"]


def test_async_payload_over_the_limit_is_413_and_unknown_function_404(gateway: Gateway) -> None:
    big = {"x": "a" * (1024 * 1024)}
    response = gateway.invoke("asyncok", big, headers={"X-Invocation-Type": "Event"})
    assert response.status_code == 413
    assert gateway.invoke("nope", {}, headers={"X-Invocation-Type": "Event"}).status_code == 404
    with gateway.client() as client:
        assert client.get(f"/invocations/{uuid.uuid4()}").status_code == 404


def test_boto3_event_invocation_is_202_and_runs(gateway: Gateway, worker: Role) -> None:
    client = boto3.client("lambda", endpoint_url=gateway.url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test",
                          config=BotoConfig(retries={"total_max_attempts": 1}))
    response = client.invoke(FunctionName="asyncok", InvocationType="Event", Payload=b'{"n": 5}')
    assert response["StatusCode"] == 202
    request_id = response["ResponseMetadata"]["RequestId"]
    assert wait_status(gateway, request_id, "succeeded")["result"] == {"doubled": 10}


def test_cli_invoke_async_and_dlq_commands(gateway: Gateway, worker: Role) -> None:
    from .test_cli import lambent

    done = lambent("invoke", "asyncfail", "--async", "--payload", '{"tag": "cli"}', "--url", gateway.url)
    assert done.returncode == 0, done.stderr
    request_id = done.stdout.strip()
    wait_status(gateway, request_id, "dead-lettered")
    listing = lambent("dlq", "ls", "asyncfail", "--url", gateway.url, env=gateway.cli_env())
    assert listing.returncode == 0 and request_id in listing.stdout and "RetriesExhausted" in listing.stdout
    shown = lambent("dlq", "show", "asyncfail", request_id, "--url", gateway.url, env=gateway.cli_env())
    assert json.loads(shown.stdout)["record"]["requestPayload"] == {"tag": "cli"}
    redriven = lambent("dlq", "redrive", "asyncfail", "--request-id", request_id, "--url", gateway.url,
                       env=gateway.cli_env())
    assert redriven.returncode == 0 and request_id in redriven.stdout
    wait_until(lambda: status(gateway, request_id)["trigger"] == "redrive", message="the redrive")
    wait_status(gateway, request_id, "dead-lettered")
    purged = lambent("dlq", "purge", "asyncfail", "--yes", "--url", gateway.url, env=gateway.cli_env())
    assert purged.returncode == 0 and "purged" in purged.stdout
    missing = lambent("dlq", "show", "asyncfail", "nope", "--url", gateway.url, env=gateway.cli_env())
    assert missing.returncode == 1 and "404" in missing.stderr and "Traceback" not in missing.stderr


def test_a_redis_that_may_evict_keys_is_refused_at_start(gateway: Gateway) -> None:
    from .test_cli import lambent

    client = redis.Redis.from_url(gateway.redis_url)
    before = client.config_get("maxmemory-policy")["maxmemory-policy"]
    assert before is not None
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        done = lambent("worker", "--burst", env={"LAMBENT_CONFIG": str(gateway.log_path.parent / "config.yaml")})
    finally:
        client.config_set("maxmemory-policy", before)
    assert done.returncode == 2
    assert "maxmemory-policy is allkeys-lru" in done.stderr and "noeviction" in done.stderr


@pytest.mark.parametrize("query", ["offset=100000000000000000000", "offset=-1", "limit=0", "limit=1001",
                                   "offset=abc"])
def test_out_of_range_dlq_paging_is_a_400_with_lambents_error_body(gateway: Gateway, query: str) -> None:
    with gateway.client() as client:
        response = client.get(f"/functions/asyncfail/dlq?{query}")
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "message", "requestId"} and body["requestId"] == response.headers["x-request-id"]


# ---------------------------------------------------------------- sandboxes on a plain asyncio loop (the worker's)


class _SlowReaper(asyncio.ThreadedChildWatcher):
    """asyncio's own child watcher (Python 3.11's default), slowed as on a busy machine: it reaps a child 0.2 s
    after the child exited (waitid with WNOWAIT waits for the exit without reaping it). Anything else that waits
    on the pid in that window robs it, and asyncio then logs "Unknown child process" and reports 255.
    (It wraps the watcher's private _do_waitpid, which typeshed does not know: the public API has no hook.)"""

    def _do_waitpid(self, loop: Any, expected_pid: int, callback: Any, args: Any) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, expected_pid, os.WEXITED | os.WNOWAIT)
        time.sleep(0.2)
        super()._do_waitpid(loop, expected_pid, callback, args)  # type: ignore[misc]


async def _start_and_kill(folder: Path, *, exited_first: bool) -> int | None:
    command = [sys.executable, "-c", "pass" if exited_first else "import time; time.sleep(60)"]
    sandbox = await SandboxProcess.start(Launch(command=command, cwd=str(folder), env={}, task_root=str(folder),
                                                path=[], cgroup=None))
    if exited_first:        # it ended by itself
        await sandbox.process.wait()
    await sandbox.kill()
    return sandbox.process.returncode


@pytest.mark.skipif(not hasattr(asyncio, "set_child_watcher"), reason="asyncio has no child watchers any more")
@pytest.mark.parametrize("exited_first", [False, True], ids=["running", "exited"])
def test_a_killed_sandbox_is_reaped_once_with_its_exit_status(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              exited_first: bool) -> None:
    # given a plain asyncio loop (the worker's, the streams' and the scheduler's) whose child watcher is slow
    # (sandboxes are not asyncio's children any more, executor/child.py: its watcher must not rob them either)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)        # child watchers are deprecated from 3.12
        previous = asyncio.get_child_watcher()
        asyncio.set_child_watcher(_SlowReaper())
    try:
        # when a sandbox is stopped, running or already ended (as a redeploy stops the old version's)
        code = asyncio.run(_start_and_kill(tmp_path, exited_first=exited_first))
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(previous)
    # then it was reaped once: no "Unknown child process", its real exit status
    assert "Unknown child process" not in caplog.text
    assert code == (0 if exited_first else -signal.SIGKILL)


REDEPLOYED = "import os\n\n\ndef handler(event, context):\n    return {{'says': '{word}', 'pid': os.getpid()}}\n"


def _zipped(word: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", REDEPLOYED.format(word=word))
    return buffer.getvalue()


def _started(pid: int) -> str | None:
    """When process `pid` started (field 22 of /proc/PID/stat), or None once it is gone (reaped)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def test_a_redeploy_stops_the_old_versions_warm_sandboxes_without_asyncio_warnings(
        tmp_path: Path, redis_url: str) -> None:
    # given a function with a warm sandbox on the gateway (uvloop) and on a worker (a plain asyncio loop);
    # unjailed (FAST), so that a sandbox's pid is the host's
    empty = tmp_path / "none"
    empty.mkdir()
    gateway = start_gateway(tmp_path / "node", redis_url, functions_dir=empty, config=FAST)
    worker = start_worker(gateway)
    try:
        def deploy(word: str) -> None:
            response = gateway.request("PUT", "/functions/greeter/code", content=_zipped(word), timeout=120,
                                       headers={"Content-Type": "application/zip"})
            assert response.status_code == 201, response.text

        def sandboxes(word: str) -> dict[int, str | None]:
            """Run it on the gateway and on the worker: the pids of the sandboxes that ran it, when they started."""
            ran = gateway.invoke("greeter", {}).json()
            queued = wait_status(gateway, enqueue(gateway, "greeter", {}), "succeeded")["result"]
            assert ran["says"] == queued["says"] == word
            return {ran["pid"]: _started(ran["pid"]), queued["pid"]: _started(queued["pid"])}

        deploy("one")
        old = sandboxes("one")
        # when it is redeployed changed and invoked again
        deploy("two")
        assert not set(sandboxes("two")) & set(old)
        # then the old version's sandboxes stop, and neither log has asyncio's warning about a child it lost
        wait_until(lambda: all(_started(pid) != started for pid, started in old.items()), timeout=30,
                   message="the old version's sandboxes to stop")
    finally:
        worker.stop()
        gateway.stop()
    for log in (gateway.log(), worker.log()):
        assert "Unknown child process" not in log, log
