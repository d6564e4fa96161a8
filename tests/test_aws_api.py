"""The AWS Lambda Invoke API, as a boto3 user sees it: `boto3.client("lambda", endpoint_url=...).invoke(...)`."""

from __future__ import annotations

import base64
import json
import re
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from .helpers import Gateway, wait_until

ARN_PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"


@pytest.fixture(scope="module")
def aws_lambda(gateway: Gateway) -> Any:
    return lambda_client(gateway)


@pytest.fixture(scope="module")
def host_aws_lambda(host_gateway: Gateway) -> Any:
    """For functions that coordinate through a folder of the host (see helpers.UNJAILED)."""
    return lambda_client(host_gateway)


def lambda_client(gateway: Gateway) -> Any:
    """A boto3 Lambda client pointed at the gateway; errors are not retried, so each call runs once."""
    return boto3.client(
        "lambda", endpoint_url=gateway.url, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=30,
                      connect_timeout=5))


def payload_of(response: dict[str, Any]) -> Any:
    """The JSON the function returned (or its error object), read from boto3's streaming body."""
    return json.loads(response["Payload"].read())


def error_code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def http_status(error: pytest.ExceptionInfo[ClientError]) -> int:
    return int(error.value.response["ResponseMetadata"]["HTTPStatusCode"])


# ---------------------------------------------------------------- RequestResponse


def test_request_response_returns_the_handlers_value_as_the_payload(aws_lambda: Any) -> None:
    # given the echo function
    # when it is invoked with an event
    response = aws_lambda.invoke(FunctionName="echo", Payload=json.dumps({"hello": "world"}))

    # then the handler's return value is the payload, with no function error
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    result = payload_of(response)
    assert result["event"] == {"hello": "world"}
    assert result["context"]["function_name"] == "echo"
    assert result["context"]["aws_request_id"] == response["ResponseMetadata"]["RequestId"]


@pytest.mark.parametrize("blank", [b"", b"  \n"], ids=["empty", "whitespace"])
def test_a_blank_payload_is_an_empty_event(aws_lambda: Any, blank: bytes) -> None:
    # given a payload with nothing but whitespace, or none at all
    # when echo is invoked with it
    response = aws_lambda.invoke(FunctionName="echo", Payload=blank)

    # then the handler gets {} and no function error
    assert "FunctionError" not in response
    assert payload_of(response)["event"] == {}


def test_an_unqualified_invocation_executes_latest(aws_lambda: Any) -> None:
    # given the echo function, when invoked by its plain name
    response = aws_lambda.invoke(FunctionName="echo", Payload=b"{}")

    # then $LATEST ran
    assert response["ExecutedVersion"] == "$LATEST"
    assert payload_of(response)["context"]["function_version"] == "$LATEST"


def test_qualifier_selects_the_published_version(aws_lambda: Any) -> None:
    # given echo, deployed at start-up as version 1
    # when invoked with Qualifier="1"
    response = aws_lambda.invoke(FunctionName="echo", Qualifier="1", Payload=b"{}")

    # then version 1 ran and the handler saw the qualified ARN
    assert response["ExecutedVersion"] == "1"
    context = payload_of(response)["context"]
    assert context["function_version"] == "1"
    assert context["invoked_function_arn"] == ARN_PREFIX + "echo:1"


def test_an_explicit_latest_qualifier_executes_latest(aws_lambda: Any) -> None:
    # given echo, when invoked with Qualifier="$LATEST"
    response = aws_lambda.invoke(FunctionName="echo", Qualifier="$LATEST", Payload=b"{}")

    # then $LATEST ran
    assert response["ExecutedVersion"] == "$LATEST"


def test_name_with_a_version_suffix_selects_that_version(aws_lambda: Any) -> None:
    # given echo version 1, when invoked as "echo:1"
    response = aws_lambda.invoke(FunctionName="echo:1", Payload=b"{}")

    # then version 1 ran
    assert response["ExecutedVersion"] == "1"
    assert payload_of(response)["context"]["function_version"] == "1"


def test_function_name_may_be_a_full_arn(aws_lambda: Any) -> None:
    # given the full ARN of echo, when invoked by it
    response = aws_lambda.invoke(FunctionName=ARN_PREFIX + "echo", Payload=json.dumps({"via": "arn"}))

    # then echo ran as $LATEST
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    result = payload_of(response)
    assert result["event"] == {"via": "arn"}
    assert result["context"]["invoked_function_arn"] == ARN_PREFIX + "echo"


def test_function_name_may_be_a_full_arn_with_a_version(aws_lambda: Any) -> None:
    # given the full ARN of echo's version 1, when invoked by it
    response = aws_lambda.invoke(FunctionName=ARN_PREFIX + "echo:1", Payload=b"{}")

    # then version 1 ran
    assert response["ExecutedVersion"] == "1"
    assert payload_of(response)["context"]["function_version"] == "1"


def test_function_name_may_be_a_partial_arn(aws_lambda: Any) -> None:
    # given the partial ARN "account:function:name", when invoked by it
    response = aws_lambda.invoke(FunctionName="000000000000:function:echo", Payload=json.dumps({"via": "partial"}))

    # then echo ran
    assert response["StatusCode"] == 200
    result = payload_of(response)
    assert result["event"] == {"via": "partial"}
    assert result["context"]["function_name"] == "echo"


# ---------------------------------------------------------------- DryRun and logs


def test_dry_run_answers_204_without_running_the_function(aws_lambda: Any) -> None:
    # given echo, when invoked as a DryRun
    response = aws_lambda.invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")

    # then 204 and an empty payload
    assert response["StatusCode"] == 204
    assert "FunctionError" not in response
    assert response["Payload"].read() == b""


def test_log_type_tail_returns_the_invocations_log_lines(aws_lambda: Any) -> None:
    # given echo, which prints the event it got
    # when invoked with LogType Tail
    response = aws_lambda.invoke(FunctionName="echo", LogType="Tail", Payload=json.dumps({"marker": "tail-me"}))

    # then LogResult is base64 of this invocation's framed logs, with what the handler printed
    request_id = response["ResponseMetadata"]["RequestId"]
    logs = base64.b64decode(response["LogResult"]).decode()
    assert f"START RequestId: {request_id} Version: $LATEST" in logs
    assert "echo got {'marker': 'tail-me'}" in logs
    assert f"END RequestId: {request_id}" in logs
    assert f"REPORT RequestId: {request_id}" in logs


def test_without_log_type_there_is_no_log_result(aws_lambda: Any) -> None:
    # given echo, when invoked without LogType
    response = aws_lambda.invoke(FunctionName="echo", Payload=b"{}")

    # then no LogResult
    assert "LogResult" not in response


# ---------------------------------------------------------------- function errors


def test_a_raising_handler_gives_an_unhandled_function_error_with_status_200(aws_lambda: Any) -> None:
    # given fail, which raises ValueError without a "value"
    # when invoked
    response = aws_lambda.invoke(FunctionName="fail", Payload=b"{}", LogType="Tail")

    # then the call itself succeeds and the payload is Lambda's error object
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = payload_of(response)
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "boom: no value"
    # and the stack trace shows the user's frames only, never the runtime's
    trace = "".join(error["stackTrace"])
    assert "_check" in trace and "handler.py" in trace
    assert "bootstrap.py" not in trace
    # and the logs carry the error and what was printed before it
    logs = base64.b64decode(response["LogResult"]).decode()
    assert "before the failure" in logs
    assert "ValueError" in logs


def test_a_handler_past_its_timeout_gives_sandbox_timedout(aws_lambda: Any) -> None:
    # given slow, whose timeout is 1 s
    # when asked to sleep 3 s
    response = aws_lambda.invoke(FunctionName="slow", Payload=json.dumps({"sleep_s": 3}))

    # then an unhandled function error of type Sandbox.Timedout
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = payload_of(response)
    assert error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in error["errorMessage"]


def test_the_function_recovers_after_a_timeout(aws_lambda: Any) -> None:
    # given slow has just timed out
    aws_lambda.invoke(FunctionName="slow", Payload=json.dumps({"sleep_s": 3}))

    # when invoked again within its timeout
    response = aws_lambda.invoke(FunctionName="slow", Payload=json.dumps({"sleep_s": 0}))

    # then it succeeds
    assert "FunctionError" not in response
    assert payload_of(response)["slept"] == 0


def test_a_handler_that_kills_its_process_gives_runtime_exit_error(aws_lambda: Any) -> None:
    # given crash, which exits its own process
    # when invoked
    response = aws_lambda.invoke(FunctionName="crash", Payload=json.dumps({"how": "exit"}))

    # then an unhandled function error of type Runtime.ExitError
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert payload_of(response)["errorType"] == "Runtime.ExitError"

    # and the next invocation gets a healthy sandbox
    healthy = aws_lambda.invoke(FunctionName="crash", Payload=json.dumps({"how": "none"}))
    assert "FunctionError" not in healthy
    assert "pid" in payload_of(healthy)


# ---------------------------------------------------------------- client context


def test_client_context_reaches_the_handler_as_lambdas_objects(aws_lambda: Any) -> None:
    # given a client context, base64 JSON as boto3 expects it, with W3C trace fields
    client_context = {"client": {"app_title": "tests", "installation_id": "i-1"}, "custom": {"tenant": "acme"},
                      "env": {"locale": "en"}, "w3c": {"traceparent": "00-abc-def-01"}}
    encoded = base64.b64encode(json.dumps(client_context).encode()).decode()

    # when echo is invoked with it
    response = aws_lambda.invoke(FunctionName="echo", ClientContext=encoded, Payload=b"{}")

    # then the handler sees context.client_context as Lambda's runtime builds it: .custom, .env, and .client
    # with every mobile-client field (None where not sent); the w3c fields are not part of it
    context = payload_of(response)["context"]
    assert context["client_context"]["custom"] == {"tenant": "acme"}
    assert context["client_context"]["env"] == {"locale": "en"}
    assert context["client"] == {"installation_id": "i-1", "app_title": "tests", "app_version_name": None,
                                 "app_version_code": None, "app_package_name": None}
    assert context["identity_type"] == "CognitoIdentity"


def test_without_client_context_the_handler_sees_none_and_an_empty_identity(aws_lambda: Any) -> None:
    # given no client context, when echo is invoked
    response = aws_lambda.invoke(FunctionName="echo", Payload=b"{}")

    # then context.client_context is None, and context.identity an object with None fields, as on Lambda
    context = payload_of(response)["context"]
    assert context["client_context"] is None
    assert context["identity"] == {"cognito_identity_id": None, "cognito_identity_pool_id": None}


def test_an_agentcore_gateway_tool_reads_its_name_from_the_client_context(aws_lambda: Any) -> None:
    # given a tool handler written as the AgentCore guide shows, and the client context the gateway sends
    custom = {"bedrockAgentCoreToolName": "OrderTarget___get_order_tool", "bedrockAgentCoreGatewayId": "gw-1"}
    encoded = base64.b64encode(json.dumps({"custom": custom}).encode()).decode()

    # when it is invoked with the tool's input
    response = aws_lambda.invoke(FunctionName="ordertool", ClientContext=encoded, LogType="Tail",
                                 Payload=b'{"orderId": "123"}')

    # then it finds the tool name where AWS puts it and answers
    assert "FunctionError" not in response
    assert payload_of(response) == {"statusCode": 200, "body": "Order Id 123 is in shipped status"}
    assert "Converted toolName: , get_order_tool" in base64.b64decode(response["LogResult"]).decode()


# ---------------------------------------------------------------- errors boto3 raises


def test_an_unknown_function_raises_resource_not_found(aws_lambda: Any) -> None:
    # given no function named "nosuchfunction"
    # when invoked
    with pytest.raises(ClientError) as error:
        aws_lambda.invoke(FunctionName="nosuchfunction", Payload=b"{}")

    # then boto3 raises ResourceNotFoundException (404)
    assert error_code(error) == "ResourceNotFoundException"
    assert http_status(error) == 404
    assert isinstance(error.value, aws_lambda.exceptions.ResourceNotFoundException)


def test_an_unknown_alias_raises_resource_not_found(aws_lambda: Any) -> None:
    # given echo has no alias "prod"
    # when invoked with Qualifier="prod"
    with pytest.raises(ClientError) as error:
        aws_lambda.invoke(FunctionName="echo", Qualifier="prod", Payload=b"{}")

    # then boto3 raises ResourceNotFoundException
    assert error_code(error) == "ResourceNotFoundException"
    assert http_status(error) == 404


def test_an_unknown_version_raises_resource_not_found(aws_lambda: Any) -> None:
    # given echo has only version 1
    # when invoked with Qualifier="99"
    with pytest.raises(ClientError) as error:
        aws_lambda.invoke(FunctionName="echo", Qualifier="99", Payload=b"{}")

    # then boto3 raises ResourceNotFoundException
    assert error_code(error) == "ResourceNotFoundException"


def test_a_payload_that_is_not_json_raises_invalid_request_content(aws_lambda: Any) -> None:
    # given a payload that is not JSON
    # when echo is invoked with it
    with pytest.raises(ClientError) as error:
        aws_lambda.invoke(FunctionName="echo", Payload=b"{not json")

    # then boto3 raises InvalidRequestContentException (400)
    assert error_code(error) == "InvalidRequestContentException"
    assert http_status(error) == 400
    assert isinstance(error.value, aws_lambda.exceptions.InvalidRequestContentException)


def test_client_context_that_is_not_base64_json_raises_invalid_request_content(aws_lambda: Any) -> None:
    # given a client context that is not base64
    # when echo is invoked with it
    with pytest.raises(ClientError) as error:
        aws_lambda.invoke(FunctionName="echo", ClientContext="not base64!", Payload=b"{}")

    # then boto3 raises InvalidRequestContentException
    assert error_code(error) == "InvalidRequestContentException"


def test_a_malformed_function_name_raises_validation_exception(aws_lambda: Any) -> None:
    # given a name with characters a function name cannot have
    # when invoked
    with pytest.raises(ClientError) as error:
        aws_lambda.invoke(FunctionName="bad name!", Payload=b"{}")

    # then boto3 raises ValidationException (400), as Lambda answers a name outside the model's pattern
    assert error_code(error) == "ValidationException"
    assert http_status(error) == 400


def test_a_payload_over_the_sync_limit_raises_request_too_large(aws_lambda: Any) -> None:
    # given a JSON payload just over the default 6 MiB synchronous limit
    payload = json.dumps({"blob": "x" * (6 * 1024 * 1024)})

    # when echo is invoked with it
    with pytest.raises(ClientError) as error:
        aws_lambda.invoke(FunctionName="echo", Payload=payload)

    # then boto3 raises RequestTooLargeException (413)
    assert error_code(error) == "RequestTooLargeException"
    assert http_status(error) == 413


def test_an_invocation_over_reserved_concurrency_raises_too_many_requests(host_aws_lambda: Any, tmp_path: Path) -> None:
    # given limited (reserved concurrency 1) holding its only slot until released
    started, release = tmp_path / "started", tmp_path / "release"
    holder: dict[str, Any] = {}
    event = json.dumps({"started": str(started), "release": str(release)})
    thread = threading.Thread(target=lambda: holder.update(
        response=host_aws_lambda.invoke(FunctionName="limited", Payload=event)))
    thread.start()
    try:
        wait_until(started.exists, message="the first invocation of limited to start")

        # when it is invoked a second time
        with pytest.raises(ClientError) as error:
            host_aws_lambda.invoke(FunctionName="limited", Payload=event)
    finally:
        release.touch()
        thread.join(30)

    # then boto3 raises TooManyRequestsException (429), and the first invocation still completes
    assert error_code(error) == "TooManyRequestsException"
    assert http_status(error) == 429
    assert error.value.response.get("Reason") == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert payload_of(holder["response"]) == "released"


def test_event_invocation_is_accepted_with_202(aws_lambda: Any) -> None:
    # given echo
    # when invoked asynchronously
    response = aws_lambda.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")

    # then it is queued: 202 and a request id (tests/test_async.py follows it to completion)
    assert response["StatusCode"] == 202
    assert response["ResponseMetadata"]["RequestId"]


# ---------------------------------------------------------------- output below sys.stdout

def test_what_children_and_the_descriptors_write_is_in_the_invocations_log(aws_lambda: Any) -> None:
    # given a handler that runs a child process without piping its output, and writes to fds 1 and 2
    # when it is invoked twice
    first = aws_lambda.invoke(FunctionName="fdwriter", LogType="Tail", Payload=b"{}")
    second = aws_lambda.invoke(FunctionName="fdwriter", LogType="Tail", Payload=b"{}")

    # then each invocation's log holds its own lines, once, as Lambda captures fds 1 and 2
    for response in (first, second):
        assert payload_of(response) == "ok"
        log = base64.b64decode(response["LogResult"]).decode()
        for line in ("child stdout line", "child stderr line", "fd 1 line", "fd 2 line", "print line"):
            assert log.count(line) == 1, (line, log)


def test_a_segfault_traceback_from_faulthandler_reaches_the_log(aws_lambda: Any) -> None:
    # given a handler that enables faulthandler and then crashes the interpreter
    response = aws_lambda.invoke(FunctionName="fdwriter", LogType="Tail", Payload=b'{"how": "segfault"}')

    # then the answer is Lambda's Runtime.ExitError, and the log has what faulthandler wrote before the end
    assert response["FunctionError"] == "Unhandled"
    error = payload_of(response)
    assert error["errorType"] == "Runtime.ExitError"
    assert "signal: segmentation fault" in error["errorMessage"]
    log = base64.b64decode(response["LogResult"]).decode()
    assert "Fatal Python error: Segmentation fault" in log, log
    assert aws_lambda.invoke(FunctionName="fdwriter", Payload=b"{}")["StatusCode"] == 200     # and it recovers


# ---------------------------------------------------------------- X-Ray trace header

def test_every_invocation_gets_an_unsampled_trace_header_as_on_lambda(aws_lambda: Any) -> None:
    # given a caller that sends no trace header, when echo is invoked twice
    answers = [aws_lambda.invoke(FunctionName="echo", Payload=b"{}") for _ in range(2)]

    # then each sees its own new, unsampled X-Ray trace in _X_AMZN_TRACE_ID, which the answer also carries,
    # and the X-Ray variables Lambda sets
    seen = []
    for response in answers:
        env = payload_of(response)["env"]
        trace = env["_X_AMZN_TRACE_ID"]
        assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=0", trace), trace
        assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-trace-id"] == trace
        assert env["AWS_XRAY_DAEMON_ADDRESS"] == "169.254.79.129:2000"
        assert env["AWS_XRAY_CONTEXT_MISSING"] == "LOG_ERROR"
        seen.append(trace)
    assert seen[0] != seen[1]


def test_a_callers_trace_header_is_passed_through(gateway: Gateway) -> None:
    # given a caller inside a sampled trace
    incoming = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"

    # when it invokes echo over HTTP with its X-Amzn-Trace-Id
    response = gateway.invoke("echo", {}, headers={"X-Amzn-Trace-Id": incoming})

    # then the function runs in that trace, and a malformed header gets a new trace instead
    assert response.json()["env"]["_X_AMZN_TRACE_ID"] == incoming
    assert response.headers["x-amzn-trace-id"] == incoming
    garbled = gateway.invoke("echo", {}, headers={"X-Amzn-Trace-Id": "Root=nonsense"})
    assert "Root=nonsense" not in garbled.json()["env"]["_X_AMZN_TRACE_ID"]
    assert garbled.json()["env"]["_X_AMZN_TRACE_ID"].endswith(";Sampled=0")


# ---------------------------------------------------------------- JSON log format (LoggingConfig)

def json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_the_json_log_format_writes_lambdas_json_lines_at_the_configured_level(aws_lambda: Any) -> None:
    # given a function with logging_config: {log_format: JSON, application_log_level: WARN}
    response = aws_lambda.invoke(FunctionName="jsonlogs", LogType="Tail", Payload=b"{}")
    request_id = response["ResponseMetadata"]["RequestId"]
    log = base64.b64decode(response["LogResult"]).decode()
    lines = json_lines(log)

    # then START and REPORT are platform records, the root logger writes Lambda's JSON lines from WARN up
    # (extra fields as keys, exceptions with their type and trace), and print() stays plain text
    assert lines[0]["type"] == "platform.start"
    assert lines[0]["record"] == {"requestId": request_id, "version": "$LATEST"}
    assert lines[-1]["type"] == "platform.report" and lines[-1]["record"]["status"] == "success"
    assert set(lines[-1]["record"]["metrics"]) >= {"durationMs", "billedDurationMs", "memorySizeMB", "maxMemoryUsedMB"}
    warning, failure = lines[1], lines[2]
    assert warning["level"] == "WARNING" and warning["message"] == "payment slow" and warning["orderId"] == 7
    assert warning["logger"] == "root" and warning["requestId"] == request_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", warning["timestamp"])
    assert failure["errorType"] == "ZeroDivisionError" and failure["stackTrace"]
    assert "below the level" not in log and "START RequestId" not in log and "END RequestId" not in log
    assert "a plain print\n" in log
    env = payload_of(aws_lambda.invoke(FunctionName="echo", Payload=b"{}"))["env"]
    assert env["AWS_LAMBDA_LOG_FORMAT"] == "Text" and "AWS_LAMBDA_LOG_LEVEL" not in env     # the default


def test_with_the_json_log_format_a_function_error_is_a_json_line(aws_lambda: Any) -> None:
    response = aws_lambda.invoke(FunctionName="jsonlogs", LogType="Tail", Payload=b'{"fail": true}')
    lines = json_lines(base64.b64decode(response["LogResult"]).decode())
    [error] = [line for line in lines if line.get("errorType") == "ValueError"]
    assert error["level"] == "ERROR" and error["errorMessage"] == "bad input"
    assert error["requestId"] == response["ResponseMetadata"]["RequestId"] and error["stackTrace"]
    assert lines[-1]["record"]["status"] == "error"


# ---------------------------------------------------------------- $LATEST is not the numbered version

@pytest.mark.parametrize("name, version, arn_tail", [("echo", "$LATEST", ":function:echo"),
                                                     ("echo:$LATEST", "$LATEST", ":function:echo:$LATEST"),
                                                     ("echo:1", "1", ":function:echo:1")])
def test_latest_and_a_numbered_version_are_told_apart_as_on_lambda(aws_lambda: Any, name: str, version: str,
                                                                   arn_tail: str) -> None:
    # when echo is invoked unqualified, as $LATEST by name, and as version 1
    payload = payload_of(aws_lambda.invoke(FunctionName=name, Payload=b"{}"))

    # then each environment knows which it is, everywhere the function can look, as on Lambda
    context, env = payload["context"], payload["env"]
    assert context["function_version"] == version and env["AWS_LAMBDA_FUNCTION_VERSION"] == version
    assert f"/[{version}]" in context["log_stream_name"] and f"/[{version}]" in env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert context["invoked_function_arn"].endswith(arn_tail)
