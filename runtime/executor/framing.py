"""Lambda's semantics of an invocation's end: which Outcome it came to, the error object Lambda would answer
(Sandbox.Timedout, Runtime.ExitError, Runtime.OutOfMemory, Function.ResponseSizeTooLarge), and its log framed
as Lambda writes it (START, the function's lines, END and REPORT, or the JSON log format's platform records).
Pure functions of what the sandbox said: the executor records the Ending they return (see Executor._finish).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from ..functions.catalog import Target
from .process import InitFailed, Reply, SandboxGone
from .result import Outcome

_OUT_OF_MEMORY = {"errorType": "Runtime.OutOfMemory", "stackTrace": [],
                  "errorMessage": "Runtime exited: the function's processes ran out of memory"}


@dataclass(frozen=True, kw_only=True)
class Call:
    """One invocation as asked for: the same from its start to its end."""
    target: Target
    request_id: str
    trigger: str
    attempt: int = 1


@dataclass(frozen=True, kw_only=True)
class Ending:
    """What one invocation came to, before it is recorded: its outcome, its answer and its figures."""
    outcome: Outcome
    payload: bytes                      # JSON: the handler's result, or Lambda's error object
    logs: str = ""                      # the function's own lines (framed by platform_lines)
    init_logs: str = ""                 # a cold start's init lines, before START
    duration_ms: float = 0.0
    init_ms: float | None = None        # set on a cold start
    memory_mb: int = 0


@dataclass(frozen=True, kw_only=True)
class Cold:
    """What a cold start adds to its invocation's log and report (nothing on a warm start)."""
    init_logs: str = ""
    init_ms: float | None = None


WARM = Cold()


def throttled() -> Ending:
    return Ending(outcome=Outcome.THROTTLED, payload=b"null")


def init_failed(call: Call, failure: InitFailed) -> Ending:
    error = {**failure.error, "requestId": call.request_id}
    return Ending(outcome=Outcome.INIT_ERROR, payload=orjson.dumps(error), init_logs=failure.logs,
                  init_ms=failure.init_ms)


def timed_out(call: Call, *, timeout_s: float, logs: list[str], cold: Cold) -> Ending:
    """Killed at the deadline: Sandbox.Timedout, and the line Lambda adds to the log."""
    request_id = call.request_id
    message = f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds"
    logs.append(f"{now_iso()} {request_id} Task timed out after {timeout_s:.2f} seconds\n")
    error = {"errorType": "Sandbox.Timedout", "errorMessage": message, "requestId": request_id}
    return Ending(outcome=Outcome.TIMEOUT, payload=orjson.dumps(error), logs="".join(logs), init_logs=cold.init_logs,
                  duration_ms=timeout_s * 1000, init_ms=cold.init_ms)


def crashed(call: Call, gone: SandboxGone, *, logs: list[str], duration_ms: float, cold: Cold) -> Ending:
    """The sandbox exited before it answered: Runtime.ExitError, or Runtime.OutOfMemory when the kernel killed it."""
    message = f"RequestId: {call.request_id} Error: {gone.reason}"
    logs.append(f"{message}\n")
    error = {"errorType": "Runtime.OutOfMemory" if gone.out_of_memory else "Runtime.ExitError",
             "errorMessage": message, "requestId": call.request_id}
    return Ending(outcome=Outcome.CRASH, payload=orjson.dumps(error), logs="".join(logs), init_logs=cold.init_logs,
                  duration_ms=duration_ms, init_ms=cold.init_ms)


def answered(call: Call, reply: Reply, *, out_of_memory: bool, payload_limit_bytes: int, cold: Cold) -> Ending:
    """The sandbox's answer: the handler's result, its error, or a result too large to return.
    `out_of_memory`: a process of the sandbox's tree was killed for memory meanwhile, which fails the invocation."""
    head: dict[str, Any] = reply.header
    memory_mb = int(head.get("max_rss_kb", 0)) // 1024
    if out_of_memory:
        head = {**head, "ok": False, "fatal": True, "error": {**_OUT_OF_MEMORY, "requestId": call.request_id}}
    if head["ok"]:
        outcome, body = Outcome.SUCCESS, reply.payload
        if len(body) > payload_limit_bytes:
            outcome = Outcome.ERROR
            body = orjson.dumps({"errorType": "Function.ResponseSizeTooLarge", "requestId": call.request_id,
                                 "errorMessage": "Response payload size exceeded maximum allowed payload "
                                                 f"size ({payload_limit_bytes} bytes)."})
    else:
        outcome = Outcome.CRASH if head.get("fatal") else Outcome.ERROR
        body = orjson.dumps(head["error"])
    return Ending(outcome=outcome, payload=body, logs=reply.logs, init_logs=cold.init_logs,
                  duration_ms=head["duration_ms"], init_ms=cold.init_ms, memory_mb=memory_mb)


def platform_lines(call: Call, ending: Ending) -> str:
    """An invocation's log as Lambda writes it: START, the function's lines, END and REPORT; with the JSON log
    format, `platform.start` and `platform.report` records instead (left out below `system_log_level` INFO)."""
    spec = call.target.version.spec
    executed_version, request_id = call.target.executed_version, call.request_id
    logs, init_logs, duration_ms, init_ms = ending.logs, ending.init_logs, ending.duration_ms, ending.init_ms
    if logs and not logs.endswith("\n"):
        logs += "\n"
    if init_logs and not init_logs.endswith("\n"):
        init_logs += "\n"
    billed = max(1, math.ceil(duration_ms))
    if spec.logging.is_json:
        if not spec.logging.system_lines:
            return init_logs + logs
        metrics = {"durationMs": round(duration_ms, 3), "billedDurationMs": billed, "memorySizeMB": spec.memory_mb,
                   "maxMemoryUsedMB": ending.memory_mb}
        if init_ms is not None:
            metrics["initDurationMs"] = round(init_ms, 3)
        outcome = ending.outcome
        status = "success" if outcome is Outcome.SUCCESS else "timeout" if outcome is Outcome.TIMEOUT else "error"
        start = {"time": now_iso(), "type": "platform.start",
                 "record": {"requestId": request_id, "version": executed_version}}
        done = {"time": now_iso(), "type": "platform.report",
                "record": {"requestId": request_id, "metrics": metrics, "status": status}}
        return f"{init_logs}{orjson.dumps(start).decode()}\n{logs}{orjson.dumps(done).decode()}\n"
    report = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed} ms\t"
              f"Memory Size: {spec.memory_mb} MB\tMax Memory Used: {ending.memory_mb} MB\t")
    if init_ms is not None:
        report += f"Init Duration: {init_ms:.2f} ms\t"
    if ending.outcome is Outcome.TIMEOUT:
        report += "Status: timeout"
    return (f"{init_logs}START RequestId: {request_id} Version: {executed_version}\n{logs}"
            f"END RequestId: {request_id}\n{report}\n")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
