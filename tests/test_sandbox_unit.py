"""The sandbox's side (runtime.sandbox.bootstrap) in-process: `_invoke` runs a handler from a temp folder and
answers with frames, as it does inside a sandbox process, in milliseconds."""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import orjson
import pytest

from runtime.sandbox import bootstrap

pytestmark = pytest.mark.timeout(10)


class _Trace:
    """Stands in for bootstrap._TraceEnv (which writes the C environment of the process it runs in)."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def set(self, value: str) -> None:
        self.values.append(value)


class Sandbox:
    """The sandbox's end of the wire in this process: `_invoke`'s frames are read back from a pipe."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self._read_fd, write_fd = os.pipe()
        self._inbound = os.fdopen(self._read_fd, "rb")
        self.channel = bootstrap._Channel(write_fd)
        self._write_fd = write_fd
        self.stream = bootstrap._Capture(self.channel)
        self._output_fd = os.memfd_create("stub-fds-1-and-2")
        self.output = bootstrap._FdOutput(self._output_fd)
        self.trace = _Trace()

    def invoke(self, payload: bytes = b"{}", **fields: Any) -> tuple[dict[str, Any], bytes, str]:
        """(the result frame's header, its payload, the log text sent before it)."""
        header = {"id": str(uuid.uuid4()), "deadline_ms": int(time.time() * 1000) + 3000,
                  "arn": "arn:aws:lambda:us-east-1:123456789012:function:fn", "version": "$LATEST", **fields}
        bootstrap._invoke(self.handler, self.channel, self.stream, self.output, cast(Any, self.trace), header, payload)
        logs = []
        while True:
            frame = bootstrap.read_frame(self._inbound)
            assert frame is not None
            head, body = frame
            if head["t"] == "log":
                logs.append(head["text"])
                continue
            assert head["t"] == "result"
            return head, body, "".join(logs)

    def write_below_python(self, text: str) -> None:
        """What a child process or C code writes to fds 1 and 2."""
        os.write(self._output_fd, text.encode())

    def close(self) -> None:
        self._inbound.close()
        os.close(self._write_fd)
        os.close(self._output_fd)


@pytest.fixture
def handler_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Sandbox]]:
    """A sandbox of a handler module (`handler` in it) written to a temp folder, loaded as the bootstrap does."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fn")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
    made: list[Sandbox] = []
    modules: list[str] = []

    def make(code: str) -> Sandbox:
        name = f"handler_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        importlib.invalidate_caches()
        modules.append(name)
        made.append(sandbox := Sandbox(bootstrap._load_handler(f"{name}.handler")))
        return sandbox

    yield make
    for sandbox in made:
        sandbox.close()
    for name in modules:
        sys.modules.pop(name, None)
    while bootstrap._STATUS:            # the bootstrap keeps /proc/self/status open for its process's life
        bootstrap._STATUS.pop().close()


def test_the_context_has_lambdas_fields(handler_from: Callable[[str], Sandbox]) -> None:
    sandbox = handler_from("""
    def handler(event, context):
        return {"event": event, "request_id": context.aws_request_id, "arn": context.invoked_function_arn,
                "version": context.function_version, "name": context.function_name,
                "memory": context.memory_limit_in_mb, "remaining_ms": context.get_remaining_time_in_millis(),
                "custom": context.client_context.custom, "attempt": context.attempt,
                "identity": context.identity.cognito_identity_id}
    """)
    head, body, _ = sandbox.invoke(b'{"a": 1}', id="req-1", version="7", attempt=2, trace_id="Root=1-abc",
                                   client_context={"custom": {"k": "v"}})
    assert head["ok"] is True and "error" not in head
    answer = json.loads(body)
    assert answer.pop("remaining_ms") in range(2000, 3001)
    assert answer == {"event": {"a": 1}, "request_id": "req-1",
                      "arn": "arn:aws:lambda:us-east-1:123456789012:function:fn", "version": "7", "name": "fn",
                      "memory": "256", "custom": {"k": "v"}, "attempt": 2, "identity": None}
    assert sandbox.trace.values == ["Root=1-abc"]


def test_a_raised_error_is_lambdas_error_object_with_the_users_frames(handler_from: Callable[[str], Sandbox]) -> None:
    sandbox = handler_from("""
    def inner(value):
        raise ValueError(f"bad value: {value}")

    def handler(event, context):
        inner(event["value"])
    """)
    head, body, logs = sandbox.invoke(b'{"value": 42}', id="req-2")
    assert head["ok"] is False and head["fatal"] is False and body == b""
    error = head["error"]
    assert error["errorType"] == "ValueError" and error["errorMessage"] == "bad value: 42"
    assert error["requestId"] == "req-2"
    frames = "".join(error["stackTrace"])
    assert 'in handler\n    inner(event["value"])' in frames and "in inner\n" in frames
    assert "bootstrap.py" not in frames
    assert logs.startswith("[ERROR] ValueError: bad value: 42\nTraceback (most recent call last):\n")


def test_a_result_that_is_not_json_serializable_is_a_marshal_error(handler_from: Callable[[str], Sandbox]) -> None:
    sandbox = handler_from("""
    def handler(event, context):
        return {"when": object()}
    """)
    head, body, _ = sandbox.invoke()
    assert head["ok"] is False and head["fatal"] is False
    assert head["error"]["errorType"] == "Runtime.MarshalError"
    assert head["error"]["errorMessage"] == "Unable to marshal response: Object of type object is not JSON serializable"


def test_a_decimal_result_is_a_number(handler_from: Callable[[str], Sandbox]) -> None:
    sandbox = handler_from("""
    import decimal

    def handler(event, context):
        return [decimal.Decimal("3"), decimal.Decimal("2.5")]
    """)
    head, body, _ = sandbox.invoke()
    assert head["ok"] is True and json.loads(body) == [3, 2.5]


def test_an_event_that_is_not_json_is_an_unmarshal_error(handler_from: Callable[[str], Sandbox]) -> None:
    sandbox = handler_from("""
    def handler(event, context):
        return "never"
    """)
    head, _, _ = sandbox.invoke(b"{not json")
    assert head["error"]["errorType"] == "Runtime.UnmarshalError"
    assert head["error"]["errorMessage"].startswith("Unable to unmarshal input: ")


def test_printed_lines_and_fd_output_go_to_the_invocations_log(handler_from: Callable[[str], Sandbox],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = handler_from("""
    def handler(event, context):
        print("from print")
        context.log("from context.log\\n")
        return None
    """)
    monkeypatch.setattr(sys, "stdout", sandbox.stream)       # as bootstrap.main() points it
    sandbox.write_below_python("from a child process\n")
    head, body, logs = sandbox.invoke()
    assert head["ok"] is True and body == b"null"
    assert logs == "from print\nfrom context.log\nfrom a child process\n"      # fd output is read at the end
    assert head["out"] == len("from a child process\n")


@pytest.mark.parametrize(("handler", "error_type"), [
    ("nohandler", "Runtime.MalformedHandlerName"),
    ("missing_module_xyz.handler", "Runtime.ImportModuleError"),
])
def test_a_handler_that_cannot_be_loaded_is_lambdas_init_error(handler: str, error_type: str) -> None:
    with pytest.raises(bootstrap._Fault) as raised:
        bootstrap._load_handler(handler)
    assert raised.value.error["errorType"] == error_type


def test_the_hosts_frames_and_the_sandboxes_are_one_codec() -> None:
    header = {"t": "invoke", "id": "r", "text": "é"}
    host_frame = bootstrap.pack_frame(orjson.dumps(header), b'{"x": 1}')      # as executor/process.py sends
    assert bootstrap.read_frame(io.BytesIO(host_frame)) == (header, b'{"x": 1}')
    sandbox_frame = bootstrap.encode_frame(header, b"payload")
    lengths = bootstrap.FRAME_LENGTHS.unpack(sandbox_frame[:bootstrap.FRAME_LENGTHS.size])
    body = sandbox_frame[bootstrap.FRAME_LENGTHS.size:]
    assert orjson.loads(body[:lengths[0]]) == header and body[lengths[0]:] == b"payload"
    assert bootstrap.read_frame(io.BytesIO(host_frame[:-1])) is None             # a stream cut short


def test_polling_for_the_next_invocation_returns_when_it_comes_or_at_the_budget() -> None:
    read_fd, write_fd = os.pipe()
    try:
        started = time.perf_counter()
        bootstrap._poll_input(read_fd, 0.02)             # nothing comes: it gives up at its budget ...
        assert time.perf_counter() - started >= 0.02
        os.write(write_fd, b"frame")
        started = time.perf_counter()
        bootstrap._poll_input(read_fd, 30.0)             # ... and returns at once when something is there,
        assert time.perf_counter() - started < 10.0
        assert os.read(read_fd, 16) == b"frame"          # which it leaves for the read
    finally:
        os.close(read_fd)
        os.close(write_fd)
