"""Lambda's semantics of an invocation's end (runtime.executor.framing): outcomes, error objects and the
START / END / REPORT lines, from what a sandbox answered, with no sandbox."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from runtime.executor import framing
from runtime.executor.framing import Call, Cold
from runtime.executor.process import InitFailed, Reply, SandboxGone
from runtime.executor.result import Outcome
from runtime.functions.catalog import Target, Version
from runtime.functions.spec import FunctionSpec

pytestmark = pytest.mark.timeout(10)

COLD = Cold(init_logs="init line", init_ms=12.5)


def call(**spec: Any) -> Call:
    version = Version(function="fn", number=3, code_hash="c0de", spec=FunctionSpec.model_validate(spec), created="")
    return Call(target=Target(version=version, qualifier="3"), request_id="req-1", trigger="sync")


def reply(ok: bool = True, payload: bytes = b'{"a":1}', **header: Any) -> Reply:
    return Reply(header={"t": "result", "ok": ok, "duration_ms": 4.2, "max_rss_kb": 30 * 1024, **header},
                 payload=payload, logs="the function's line\n")


def test_a_timeout_is_sandbox_timedout_and_its_report_says_so() -> None:
    logs = ["before the deadline\n"]
    ending = framing.timed_out(call(timeout=2), timeout_s=2.0, logs=logs, cold=COLD)
    assert ending.outcome is Outcome.TIMEOUT and ending.duration_ms == 2000.0 and ending.init_ms == 12.5
    assert orjson.loads(ending.payload) == {"errorType": "Sandbox.Timedout", "requestId": "req-1",
                                            "errorMessage": "RequestId: req-1 Error: Task timed out after 2.00 seconds"}
    assert ending.logs.startswith("before the deadline\n") and ending.logs.endswith(
        " req-1 Task timed out after 2.00 seconds\n")
    report = framing.platform_lines(call(timeout=2), ending).splitlines()[-1]
    assert report == ("REPORT RequestId: req-1\tDuration: 2000.00 ms\tBilled Duration: 2000 ms\tMemory Size: 128 MB\t"
                      "Max Memory Used: 0 MB\tInit Duration: 12.50 ms\tStatus: timeout")


@pytest.mark.parametrize(("out_of_memory", "error_type"), [(False, "Runtime.ExitError"),
                                                           (True, "Runtime.OutOfMemory")])
def test_a_sandbox_that_exits_is_a_crash(out_of_memory: bool, error_type: str) -> None:
    gone = SandboxGone("Runtime exited with error: signal: killed", out_of_memory=out_of_memory)
    ending = framing.crashed(call(), gone, logs=[], duration_ms=7.0, cold=framing.WARM)
    assert ending.outcome is Outcome.CRASH and ending.init_ms is None
    assert orjson.loads(ending.payload) == {
        "errorType": error_type, "requestId": "req-1",
        "errorMessage": "RequestId: req-1 Error: Runtime exited with error: signal: killed"}
    assert ending.logs == "RequestId: req-1 Error: Runtime exited with error: signal: killed\n"


def test_an_init_failure_keeps_the_init_logs_and_names_the_request() -> None:
    error = {"errorType": "Runtime.ImportModuleError", "errorMessage": "Unable to import module 'x'", "stackTrace": []}
    ending = framing.init_failed(call(), InitFailed(error, init_ms=3.0, logs="import failed\n"))
    assert ending.outcome is Outcome.INIT_ERROR and ending.init_ms == 3.0 and ending.init_logs == "import failed\n"
    assert orjson.loads(ending.payload) == {**error, "requestId": "req-1"}


def test_a_result_is_a_success_with_the_sandboxes_figures() -> None:
    ending = framing.answered(call(), reply(), out_of_memory=False, payload_limit_bytes=100, cold=COLD)
    assert ending.outcome is Outcome.SUCCESS and ending.payload == b'{"a":1}'
    assert (ending.duration_ms, ending.memory_mb, ending.init_ms) == (4.2, 30, 12.5)


def test_a_result_past_the_payload_limit_is_response_size_too_large() -> None:
    ending = framing.answered(call(), reply(payload=b"x" * 101), out_of_memory=False, payload_limit_bytes=100,
                              cold=framing.WARM)
    assert ending.outcome is Outcome.ERROR
    assert orjson.loads(ending.payload) == {
        "errorType": "Function.ResponseSizeTooLarge", "requestId": "req-1",
        "errorMessage": "Response payload size exceeded maximum allowed payload size (100 bytes)."}


def test_a_handlers_error_is_an_error_and_a_fatal_one_a_crash() -> None:
    error = {"errorType": "KeyError", "errorMessage": "'x'", "stackTrace": [], "requestId": "req-1"}
    raised = framing.answered(call(), reply(False, b"", error=error), out_of_memory=False, payload_limit_bytes=100,
                              cold=framing.WARM)
    assert raised.outcome is Outcome.ERROR and orjson.loads(raised.payload) == error
    fatal = framing.answered(call(), reply(False, b"", error=error, fatal=True), out_of_memory=False,
                             payload_limit_bytes=100, cold=framing.WARM)
    assert fatal.outcome is Outcome.CRASH


def test_a_process_killed_for_memory_fails_an_invocation_that_returned() -> None:
    ending = framing.answered(call(), reply(), out_of_memory=True, payload_limit_bytes=100, cold=framing.WARM)
    assert ending.outcome is Outcome.CRASH
    assert orjson.loads(ending.payload)["errorType"] == "Runtime.OutOfMemory"


def test_text_logs_are_framed_by_start_end_and_report() -> None:
    ending = framing.answered(call(), reply(), out_of_memory=False, payload_limit_bytes=100, cold=COLD)
    assert framing.platform_lines(call(), ending) == (
        "init line\nSTART RequestId: req-1 Version: 3\nthe function's line\nEND RequestId: req-1\n"
        "REPORT RequestId: req-1\tDuration: 4.20 ms\tBilled Duration: 5 ms\tMemory Size: 128 MB\t"
        "Max Memory Used: 30 MB\tInit Duration: 12.50 ms\t\n")


def test_json_logs_are_framed_by_platform_records() -> None:
    json_call = call(logging_config={"log_format": "JSON"})
    ending = framing.answered(json_call, reply(), out_of_memory=False, payload_limit_bytes=100, cold=framing.WARM)
    start, line, report = framing.platform_lines(json_call, ending).splitlines()
    assert json.loads(start)["type"] == "platform.start" and json.loads(start)["record"] == {
        "requestId": "req-1", "version": "3"}
    assert line == "the function's line"
    assert json.loads(report)["record"] == {"requestId": "req-1", "status": "success", "metrics": {
        "durationMs": 4.2, "billedDurationMs": 5, "memorySizeMB": 128, "maxMemoryUsedMB": 30}}


def test_json_logs_above_info_leave_the_platform_records_out() -> None:
    quiet = call(logging_config={"log_format": "JSON", "system_log_level": "WARN"})
    ending = framing.answered(quiet, reply(), out_of_memory=False, payload_limit_bytes=100, cold=COLD)
    assert framing.platform_lines(quiet, ending) == "init line\nthe function's line\n"
