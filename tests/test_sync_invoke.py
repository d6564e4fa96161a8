"""`POST /functions/{name}/invoke`: status codes, Lambda's error types, context, logs, limits, concurrency."""

from __future__ import annotations

import concurrent.futures
import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from .helpers import Gateway, wait_until


def test_success_returns_the_handlers_value_with_request_id(gateway: Gateway) -> None:
    response = gateway.invoke("echo", {"a": [1, 2]})
    assert response.status_code == 200
    body = response.json()
    assert body["event"] == {"a": [1, 2]}
    assert body["context"]["aws_request_id"] == response.headers["x-request-id"]
    assert response.headers["x-executed-version"] == "$LATEST"


def test_each_request_id_is_a_new_random_uuid_as_on_lambda(gateway: Gateway) -> None:
    ids = [gateway.invoke("echo", {}).headers["x-request-id"] for _ in range(20)]
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid            # lower-case hex, dashes where a UUID has them
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)


def test_context_has_lambdas_fields_and_a_working_remaining_time(gateway: Gateway) -> None:
    context = gateway.invoke("echo", {}).json()["context"]
    assert context["function_name"] == "echo"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert context["memory_limit_in_mb"] == "256"
    assert context["log_group_name"] == "/aws/lambda/echo"
    assert "[$LATEST]" in context["log_stream_name"]      # unqualified: the $LATEST environment
    assert 4000 < context["remaining_ms"] <= 5000       # timeout: 5 in its function.yaml


def test_remaining_time_counts_down_during_the_invocation(gateway: Gateway) -> None:
    body = gateway.invoke("slow", {"sleep_s": 0.3}).json()
    assert body["remaining_ms"] <= 1000 - 300


def test_sandbox_sees_lambdas_variables_and_its_own_but_no_server_secret(gateway: Gateway) -> None:
    body = gateway.invoke("echo", {}).json()
    env = body["env"]
    assert env["COLOR"] == "blue" and env["COUNT"] == "3"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "echo"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_REGION"] == "us-east-1"
    assert env["_HANDLER"] == "handler.handler"
    assert env["LAMBDA_TASK_ROOT"] == body["cwd"]
    assert "AWS_SECRET_ACCESS_KEY" not in env and "DB_PASSWORD" not in env
    assert not any(key.startswith("LAMBENT_") for key in env)


def test_qualified_by_version_number_reports_that_version(gateway: Gateway) -> None:
    response = gateway.invoke("echo:1", {})
    assert response.status_code == 200
    assert response.headers["x-executed-version"] == "1"
    assert response.json()["context"]["invoked_function_arn"].endswith(":function:echo:1")


@pytest.mark.parametrize(("name", "payload", "headers", "status", "version"), [
    ("echo", {}, {}, 200, "$LATEST"),
    ("echo:1", {}, {}, 200, "1"),
    ("fail", {}, {}, 500, "$LATEST"),
    ("slow", {"sleep_s": 5}, {}, 504, "$LATEST"),
    ("echo:1", {}, {"X-Invocation-Type": "DryRun"}, 204, "1"),
], ids=["success", "version", "function-error", "timeout", "dry-run"])
def test_every_answer_that_names_a_version_carries_lambdas_header_too(
        gateway: Gateway, name: str, payload: dict[str, Any], headers: dict[str, str], status: int,
        version: str) -> None:
    # given the native route, invoked with any outcome
    response = gateway.invoke(name, payload, headers=headers)
    # then the version that ran is named as README says: Lambent's header and Lambda's X-Amz-Executed-Version
    assert response.status_code == status, response.text
    assert response.headers["x-executed-version"] == response.headers["x-amz-executed-version"] == version


def test_handler_error_is_500_with_lambdas_error_shape_without_runtime_frames(gateway: Gateway) -> None:
    response = gateway.invoke("fail", {})
    assert response.status_code == 500
    assert response.headers["x-function-error"] == "Unhandled"
    error = response.json()
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "boom: no value"
    assert error["requestId"] == response.headers["x-request-id"]
    trace = "".join(error["stackTrace"])
    assert "in handler" in trace and "in _check" in trace
    assert "bootstrap.py" not in trace


def test_timeout_is_504_sandbox_timedout_and_the_next_call_is_healthy(gateway: Gateway) -> None:
    response = gateway.invoke("slow", {"sleep_s": 5})
    assert response.status_code == 504
    error = response.json()
    assert error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in error["errorMessage"]
    assert gateway.invoke("slow", {"sleep_s": 0}).status_code == 200


def test_memory_over_the_limit_is_an_error_and_the_next_call_is_healthy(gateway: Gateway) -> None:
    response = gateway.invoke("memhog", {"mb": 200})      # memory_mb: 64
    assert response.status_code == 500
    assert response.json()["errorType"] == "Runtime.OutOfMemory"
    healthy = gateway.invoke("memhog", {"mb": 8})
    assert healthy.status_code == 200 and healthy.json() == {"allocated_mb": 8}


def test_sandbox_that_exits_is_runtime_exit_error_and_the_next_call_is_healthy(gateway: Gateway) -> None:
    for how, reason in [("exit", "exit status 3"), ("kill", "signal: killed"), ("sysexit", "exit status 4")]:
        response = gateway.invoke("crash", {"how": how})
        assert response.status_code == 500, how
        error = response.json()
        assert error["errorType"] == "Runtime.ExitError"
        assert reason in error["errorMessage"]
        assert gateway.invoke("crash", {"how": "none"}).status_code == 200


def test_result_that_is_not_json_is_a_marshal_error_and_the_next_call_is_healthy(gateway: Gateway) -> None:
    response = gateway.invoke("marshal", {})
    assert response.status_code == 500
    error = response.json()
    assert error["errorType"] == "Runtime.MarshalError"
    assert "Unable to marshal response" in error["errorMessage"] and "set" in error["errorMessage"]
    assert gateway.invoke("marshal", {"ok": True}).json() == {"ok": True}


def test_import_failure_is_import_module_error_and_marks_the_function_failed(host_gateway: Gateway) -> None:
    flag = host_gateway.data_dir / "import-fails"        # flagimport's import fails while this file exists
    flag.touch()
    try:
        response = host_gateway.invoke("flagimport", {})
    finally:
        flag.unlink()
    assert response.status_code == 500
    error = response.json()
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'handler'" in error["errorMessage"]
    assert "module_that_does_not_exist" in error["errorMessage"]
    with host_gateway.client() as client:
        state = client.get("/functions/flagimport").json()
    assert state["state"] == "Failed"
    assert state["node"]["last_init_error"]["errorType"] == "Runtime.ImportModuleError"
    assert host_gateway.invoke("echo", {}).status_code == 200     # the gateway is unharmed
    assert host_gateway.invoke("flagimport", {}).json() == "imported"    # and the next cold start is healthy


def test_folders_whose_handler_does_not_import_are_not_deployed_at_start(gateway: Gateway) -> None:
    log = gateway.log()
    assert "Runtime.ImportModuleError" in log and "module_that_does_not_exist" in log
    assert "Runtime.HandlerNotFound" in log and "handle_it" in log
    for name in ("importerr", "nohandler"):
        assert gateway.invoke(name, {}).status_code == 404


def test_unknown_function_is_404(gateway: Gateway) -> None:
    response = gateway.invoke("nope", {})
    assert response.status_code == 404
    assert response.json()["error"] == "ResourceNotFound"
    assert "x-request-id" in response.headers


def test_unknown_version_or_alias_is_404(gateway: Gateway) -> None:
    assert gateway.invoke("echo:99", {}).status_code == 404
    assert gateway.invoke("echo:prod", {}).status_code == 404


def test_invalid_names_are_400_never_a_path(gateway: Gateway) -> None:
    with gateway.client() as client:
        for name in ["bad%20name", "a" * 65, "..%2F..%2Fetc", "x:bad%20q"]:
            response = client.post(f"/functions/{name}/invoke", content=b"{}")
            assert response.status_code in (400, 404), name
            assert response.headers["content-type"] == "application/json"
            assert "message" in response.json()


def test_body_that_is_not_json_is_400(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/functions/echo/invoke", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequestContent"


def test_json_the_gateway_accepts_is_json_the_sandbox_decodes(gateway: Gateway) -> None:
    # a 512-deep event reaches the handler; one level more is refused at the gateway, not a crashed sandbox
    deepest = b"[" * 512 + b'"[[{"' + b"]" * 512
    with gateway.client() as client:
        accepted = client.post("/functions/echo/invoke", content=deepest)
        refused = client.post("/functions/echo/invoke", content=b"[" * 513 + b"]" * 513)
        aws = client.post("/2015-03-31/functions/echo/invocations", content=b"[" * 1000 + b"]" * 1000)
    assert accepted.status_code == 200, accepted.text
    event = accepted.json()["event"]
    for _ in range(511):
        event = event[0]
    assert event == ["[[{"]
    assert refused.status_code == 400
    assert refused.json()["error"] == "InvalidRequestContent"
    assert "deeper than 512 levels" in refused.json()["message"]
    assert aws.status_code == 400
    assert gateway.invoke("echo", {"after": "deep"}).json()["event"] == {"after": "deep"}


def test_empty_body_is_an_empty_event(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/functions/echo/invoke", content=b"")
    assert response.status_code == 200
    assert response.json()["event"] == {}


def test_body_over_the_sync_limit_is_413(gateway: Gateway) -> None:
    big = b'{"x": "' + b"a" * (6 * 1024 * 1024) + b'"}'
    with gateway.client() as client:
        response = client.post("/functions/echo/invoke", content=big)
    assert response.status_code == 413
    assert response.json()["error"] == "RequestTooLarge"


def test_unknown_invocation_type_is_400(gateway: Gateway) -> None:
    response = gateway.invoke("echo", {}, headers={"X-Invocation-Type": "Sometime"})
    assert response.status_code == 400
    assert "RequestResponse, Event or DryRun" in response.json()["message"]


def test_two_invocations_run_in_parallel_in_two_sandboxes(host_gateway: Gateway, tmp_path: Path) -> None:
    event = {"folder": str(tmp_path), "parties": 2, "wait_s": 5}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: host_gateway.invoke("barrier", event), range(2)))
    assert [response.status_code for response in responses] == [200, 200], [r.text for r in responses]
    assert responses[0].json()["pid"] != responses[1].json()["pid"]


def test_a_cpu_bound_handler_gets_two_sandboxes_per_cpu_and_further_callers_queue(gateway: Gateway) -> None:
    cpus = len(os.sched_getaffinity(0))
    for _ in range(5):                   # the node learns that this handler computes rather than waits
        assert gateway.invoke("spin", {"spin_ms": 20}).status_code == 200
    callers = 4 * cpus + 4
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        responses = list(pool.map(lambda _: gateway.invoke("spin", {"spin_ms": 20}), range(callers)))
    assert [response.status_code for response in responses] == [200] * callers
    assert len({response.json()["pid"] for response in responses}) <= 2 * cpus
    with gateway.client() as client:
        assert client.get("/functions/spin").json()["node"]["sandboxes"] <= 2 * cpus


def test_a_cpu_bound_handler_that_waits_on_itself_is_not_deadlocked(host_gateway: Gateway, tmp_path: Path) -> None:
    # Every sandbox the CPU-bound handler may have is held by a caller that waits for a nested call of the
    # same function, queued behind them: the queue sees nothing come free and starts sandboxes after all.
    parties = 2 * len(os.sched_getaffinity(0))
    for _ in range(5):                   # the node learns that this handler computes
        assert host_gateway.invoke("spin", {"spin_ms": 20}).status_code == 200
    event = {"call": f"{host_gateway.url}/functions/spin/invoke", "folder": str(tmp_path), "parties": parties}
    with concurrent.futures.ThreadPoolExecutor(parties) as pool:
        responses = list(pool.map(lambda _: host_gateway.invoke("spin", event), range(parties)))
    assert [response.status_code for response in responses] == [200] * parties, [r.text for r in responses]
    assert all(response.json()["nested"]["pid"] for response in responses)


def test_a_waiting_handler_still_gets_a_sandbox_per_caller(host_gateway: Gateway, tmp_path: Path) -> None:
    # Past two sandboxes per CPU too: only a handler that computes has its callers queue.
    parties = 4 * len(os.sched_getaffinity(0)) + 2
    event = {"folder": str(tmp_path), "parties": parties, "wait_s": 10}
    with concurrent.futures.ThreadPoolExecutor(parties) as pool:
        responses = list(pool.map(lambda _: host_gateway.invoke("barrier", event), range(parties)))
    assert [response.status_code for response in responses] == [200] * parties, [r.text for r in responses]
    assert len({response.json()["pid"] for response in responses}) == parties


def test_warm_sandbox_is_reused_and_init_runs_once(gateway: Gateway) -> None:
    first = gateway.invoke("initprint", {}).json()
    second = gateway.invoke("initprint", {}).json()
    assert first["init_at"] == second["init_at"]


def test_reserved_concurrency_gives_429_at_once_past_the_limit(host_gateway: Gateway, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    event = {"started": str(started), "release": str(release)}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(host_gateway.invoke, "limited", event)
        wait_until(started.exists, message="the first invocation to hold the only slot")
        throttled = host_gateway.invoke("limited", event)
        release.touch()
        assert holder.result().status_code == 200
    assert throttled.status_code == 429
    assert throttled.json()["reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    # The slot is released: the next call runs.
    assert host_gateway.invoke("limited", event).status_code == 200


def test_logs_are_framed_and_kept_in_redis_per_invocation(gateway: Gateway) -> None:
    response = gateway.invoke("fail", {})
    request_id = response.headers["x-request-id"]
    client = redis.Redis.from_url(gateway.redis_url)

    def stored() -> dict | None:
        for raw in client.lrange("lambent:fn:fail:logs", 0, -1):
            record = orjson.loads(raw)
            if record["requestId"] == request_id:
                return record
        return None

    record = wait_until(stored, message="the invocation's logs in Redis")
    text = record["text"]
    lines = text.splitlines()
    assert lines[0] == f"START RequestId: {request_id} Version: $LATEST"
    assert "before the failure" in text
    assert f"\t{request_id}\tabout to fail" in text and "[ERROR]" in text
    assert "[ERROR] ValueError: boom: no value" in text
    assert f"END RequestId: {request_id}" in lines
    report = lines[-1]
    assert report.startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    for field in ("Billed Duration:", "Memory Size: 128 MB", "Max Memory Used:"):
        assert field in report
    assert f"request_id={request_id}" in gateway.log()     # and in the server's own log


def test_cold_start_reports_init_duration_and_init_output(gateway: Gateway) -> None:
    client = redis.Redis.from_url(gateway.redis_url)
    gateway.invoke("initprint", {})
    records = wait_until(lambda: client.lrange("lambent:fn:initprint:logs", 0, -1), message="initprint logs")
    first = orjson.loads(records[-1])["text"]
    assert first.startswith("init says hello\nSTART RequestId:")
    assert "Init Duration:" in first.splitlines()[-1]


def test_function_list_and_detail(gateway: Gateway) -> None:
    with gateway.client() as client:
        listing = client.get("/functions").json()["functions"]
        detail = client.get("/functions/urlecho").json()
        missing = client.get("/functions/nope")
    names = [item["name"] for item in listing]
    assert "echo" in names and names == sorted(names)
    assert detail["triggers"] == ["http"] and detail["version"] == 1
    assert [version["version"] for version in detail["versions"]] == [1]
    assert missing.status_code == 404


def test_openapi_document_describes_the_endpoints(gateway: Gateway) -> None:
    with gateway.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    for path in ["/functions/{name}/invoke", "/2015-03-31/functions/{function_name}/invocations",
                 "/functions", "/functions/{name}", "/healthz", "/fn/{name}/{path}"]:
        assert path in paths, path


def _data_segments_in(conn: Any) -> int:
    """Linux's count of the TCP segments with data that this socket received (struct tcp_info's
    tcpi_data_segs_in, at byte 152; since Linux 4.6)."""
    import socket
    import struct

    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    count: int = struct.unpack_from("I", info, 152)[0]
    return count


def test_an_answer_comes_in_one_segment_head_and_body_together(gateway: Gateway) -> None:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(gateway.url)
    request = (f"POST /functions/echo/invoke HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               "Content-Length: 2\r\n\r\n{}").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        for _ in range(3):          # on one keep-alive connection, warm
            # given the segments with data this connection has received so far
            before = _data_segments_in(conn)
            # when one invocation is answered
            conn.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
                more = conn.recv(65536)
                assert more, answer
                answer += more
            # then its head and its body came in one segment: one send() of the gateway, one wake-up of the client
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["event"] == {}
            assert _data_segments_in(conn) - before == 1


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no content-length: {answer[:300]!r}")


@pytest.mark.parametrize("which", ["gateway", "host_gateway"])     # jailed, and without a jail
def test_max_memory_used_is_the_sandboxes_peak(which: str, request: pytest.FixtureRequest) -> None:
    gateway: Gateway = request.getfixturevalue(which)
    client = redis.Redis.from_url(gateway.redis_url)

    def max_memory_mb(mb: int) -> int:
        response = gateway.invoke("memhog", {"mb": mb})
        assert response.status_code == 200, response.text
        rid = response.headers["x-request-id"]

        def report() -> str | None:
            for raw in client.lrange("lambent:fn:memhog:logs", 0, -1):
                record = orjson.loads(raw)
                if record["requestId"] == rid:
                    return str(record["text"].splitlines()[-1])
            return None

        line = wait_until(report, message="the invocation's REPORT line")
        return int(line.split("Max Memory Used: ")[1].split(" MB")[0])

    # given a warm sandbox (an earlier test may have had it allocate up to 8 MB)
    small = max_memory_mb(1)
    assert 5 <= small < 40
    # when an invocation holds 40 MB
    large = max_memory_mb(40)
    # then its REPORT counts them on top of the interpreter, and the next (small again) still reports that
    # peak, as Lambda's does
    assert large >= 40 + 5 and large > small
    assert max_memory_mb(1) >= large
