"""The one invoke flow (gateway/invoke_flow.py) under its two APIs, in-process against a fake executor: the answers
that a real sandbox rarely gives on demand (no sandbox in time, throttled, timed out) and what the executor is
handed. The catalog is the real one, on Redis; each call goes through the route body hot.py calls."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fastapi import Request, Response
from redis.asyncio import Redis

from runtime.config import Config
from runtime.executor import Busy, InvocationResult, Outcome
from runtime.functions.catalog import Catalog, Target
from runtime.functions.package import check_zip, pack_folder
from runtime.gateway import aws, invoke

RID = "0b7e9f3c-1111-4222-8333-944455556666"
TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


class FakeExecutor:
    """Answers every invocation with `outcome` (or raises Busy), and keeps what it was handed."""

    def __init__(self, outcome: Outcome | None) -> None:
        self.outcome = outcome
        self.calls: list[dict[str, Any]] = []

    async def invoke(self, target: Target, payload: bytes, **kwargs: Any) -> InvocationResult:
        self.calls.append({"target": target, "payload": payload, **kwargs})
        if self.outcome is None:
            raise Busy("no sandbox for echo within 1 s")
        body = b'{"ok":true}' if self.outcome is Outcome.SUCCESS else b'{"errorType":"Sandbox.Timedout"}'
        return InvocationResult(request_id=kwargs["request_id"], function=target.version.function,
                                version=target.version.label, executed_version=target.executed_version,
                                outcome=self.outcome, payload=body, logs="START\nhello\nEND\n")



@pytest.fixture
def call(tmp_path: Path, redis_url: str) -> Any:
    """call(api, path_params, outcome, headers=..., query=..., body=...) -> (Response, FakeExecutor)."""
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "handler.py").write_text("def handler(event, context):\n    return event\n")

    def run(api: Any, path_params: dict[str, str], outcome: Outcome | None, *, headers: dict[str, str] | None = None,
            query: str = "", body: bytes = b"{}") -> tuple[Response, FakeExecutor]:
        async def go() -> tuple[Response, FakeExecutor]:
            redis = Redis.from_url(redis_url)
            catalog = Catalog(redis, data_dir=tmp_path / "data")
            try:
                await catalog.deploy("echo", check_zip(pack_folder(folder)))
                executor = FakeExecutor(outcome)
                services = SimpleNamespace(config=Config(redis_url=redis_url), catalog=catalog, executor=executor)
                sent = [{"type": "http.request", "body": body, "more_body": False}]

                async def receive() -> dict[str, Any]:
                    return sent.pop(0)

                scope = {"type": "http", "method": "POST", "path": "/", "query_string": query.encode(),
                         "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
                         "path_params": path_params, "state": {"request_id": RID},
                         "app": SimpleNamespace(state=SimpleNamespace(services=services))}
                return await api(Request(scope, receive)), executor
            finally:
                await redis.aclose()
        return asyncio.run(go())
    return run


def body_of(response: Response) -> Any:
    return orjson.loads(bytes(response.body))


def test_no_sandbox_in_time_is_429_in_each_apis_words(call: Any) -> None:
    native, _ = call(invoke.handle_invoke, {"name": "echo"}, None)
    assert native.status_code == 429
    assert body_of(native) == {"error": "TooManyRequests", "message": "no sandbox for echo within 1 s; retry later",
                               "requestId": RID, "reason": "ConcurrentInvocationLimitExceeded"}
    amazon, _ = call(aws.handle_invoke, {"function_name": "echo"}, None)
    assert amazon.status_code == 429
    assert amazon.headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    assert amazon.headers["x-amzn-RequestId"] == RID
    assert body_of(amazon) == {"Type": "User", "message": "Rate Exceeded.",
                               "Reason": "ConcurrentInvocationLimitExceeded"}


def test_reserved_concurrency_throttle_is_429_with_retry_after_natively_and_aws_reason(call: Any) -> None:
    native, _ = call(invoke.handle_invoke, {"name": "echo"}, Outcome.THROTTLED)
    assert native.status_code == 429
    assert native.headers["Retry-After"] == "1"
    assert native.headers["X-Executed-Version"] == "$LATEST"
    assert body_of(native)["reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert "X-Function-Error" not in native.headers
    amazon, _ = call(aws.handle_invoke, {"function_name": "echo"}, Outcome.THROTTLED)
    assert amazon.status_code == 429
    assert body_of(amazon)["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert "Retry-After" not in amazon.headers


def test_a_timeout_is_504_natively_and_200_with_the_function_error_header_on_aws(call: Any) -> None:
    native, _ = call(invoke.handle_invoke, {"name": "echo"}, Outcome.TIMEOUT)
    assert (native.status_code, native.headers["X-Function-Error"]) == (504, "Unhandled")
    amazon, _ = call(aws.handle_invoke, {"function_name": "echo"}, Outcome.TIMEOUT,
                     headers={"X-Amz-Log-Type": "Tail"})
    assert (amazon.status_code, amazon.headers["X-Amz-Function-Error"]) == (200, "Unhandled")
    assert base64.b64decode(amazon.headers["X-Amz-Log-Result"]) == b"START\nhello\nEND\n"
    assert body_of(amazon) == {"errorType": "Sandbox.Timedout"}


def test_the_executor_gets_the_event_the_trace_and_on_aws_the_client_context(call: Any) -> None:
    # given a blank body and the caller's trace header, when invoked natively
    native, executor = call(invoke.handle_invoke, {"name": "echo"}, Outcome.SUCCESS, body=b"  ",
                            headers={"X-Amzn-Trace-Id": TRACE})
    # then the sandbox gets `{}` and the trace, and the answer names the version that ran under both headers
    (sent,) = executor.calls
    assert (sent["payload"], sent["trace_id"], sent["trigger"], sent["request_id"]) == (b"{}", TRACE, "sync", RID)
    assert sent["client_context"] is None
    assert (native.status_code, bytes(native.body)) == (200, b'{"ok":true}')
    assert native.headers["X-Executed-Version"] == native.headers["X-Amz-Executed-Version"] == "$LATEST"
    assert native.headers["X-Amzn-Trace-Id"] == TRACE
    # when invoked through the AWS API with a client context, qualified with $LATEST by name
    context = base64.b64encode(b'{"custom": {"tenant": "a"}}').decode()
    amazon, executor = call(aws.handle_invoke, {"function_name": "echo:$LATEST"}, Outcome.SUCCESS,
                            headers={"X-Amz-Client-Context": context})
    (sent,) = executor.calls
    assert sent["client_context"] == {"custom": {"tenant": "a"}}
    assert sent["target"].named and sent["target"].qualifier == "$LATEST"
    assert amazon.headers["X-Amz-Executed-Version"] == "$LATEST"
    assert "X-Executed-Version" not in amazon.headers


def test_what_is_refused_never_reaches_the_executor(call: Any) -> None:
    for api, params, headers, query, body, status in [
        (invoke.handle_invoke, {"name": "echo"}, {"X-Invocation-Type": "Sometime"}, "", b"{}", 400),
        (invoke.handle_invoke, {"name": "bad!name"}, {}, "", b"{}", 400),
        (invoke.handle_invoke, {"name": "echo"}, {}, "qualifier=7", b"{}", 404),
        (invoke.handle_invoke, {"name": "echo"}, {}, "", b"{not json", 400),
        (invoke.handle_invoke, {"name": "echo"}, {"X-Invocation-Type": "DryRun"}, "", b"{}", 204),
        (aws.handle_invoke, {"function_name": "echo"}, {"X-Amz-Client-Context": "%%"}, "", b"{}", 400),
        (aws.handle_invoke, {"function_name": "echo"}, {"X-Amz-Invocation-Type": "DryRun"}, "", b"{}", 204),
        (aws.handle_invoke, {"function_name": "echo:1"}, {}, "Qualifier=2", b"{}", 400),
    ]:
        response, executor = call(api, params, Outcome.SUCCESS, headers=headers, query=query, body=body)
        assert response.status_code == status, (params, headers, query, response.body)
        assert executor.calls == []
