"""The server's own log lines (observability/setup.py): their time stamps, their fields, the batches the lines of
invocations are written in; and the warning a role that started a thread too early gets."""

from __future__ import annotations

import asyncio
import io
import logging
import os

import orjson
import pytest

from runtime.observability.setup import INVOCATIONS, BatchedLines, JsonFormatter, TextFormatter, log_invocation


def _record(created: float, message: str = "invocation success", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("runtime.executor.executor", logging.INFO, "", 0, message, None, None)
    record.created, record.msecs = created, round((created - int(created)) * 1000, 3)
    record.__dict__.update(extra)
    return record


def test_each_line_has_its_own_utc_time_to_the_millisecond() -> None:
    text = TextFormatter()
    # lines within one second, across a second's end and across a day's end each show their own time
    stamps = [text.format(_record(moment)).split(" ")[0]
              for moment in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.5, 1_700_006_399.25, 1_700_006_400.0)]
    assert stamps == ["2023-11-14T22:13:20.001Z", "2023-11-14T22:13:20.999Z", "2023-11-14T22:13:21.500Z",
                      "2023-11-14T23:59:59.250Z", "2023-11-15T00:00:00.000Z"]


def test_structured_fields_and_logs_in_text_and_json() -> None:
    record = _record(1_700_000_000.25, function="f", request_id="r-1", logs="START\nEND\n")
    line = TextFormatter().format(record)
    assert line.splitlines() == ["2023-11-14T22:13:20.250Z INFO    runtime.executor.executor: invocation success  "
                                 "function=f request_id=r-1", "    | START", "    | END"]
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry == {"time": "2023-11-14T22:13:20.250Z", "level": "INFO", "logger": "runtime.executor.executor",
                     "message": "invocation success", "function": "f", "request_id": "r-1", "logs": "START\nEND\n"}


@pytest.mark.parametrize("gathered", [False, True], ids=["as-configured", "caller-thread-process-gathered"])
def test_an_invocations_record_is_the_one_info_makes(monkeypatch: pytest.MonkeyPatch, gathered: bool) -> None:
    # given the logging settings configure() makes (nothing gathered of the caller, thread or process), or not
    monkeypatch.setattr(logging, "_srcfile", logging._srcfile if gathered else None)
    for setting in ("logThreads", "logProcesses", "logMultiprocessing", "logAsyncioTasks"):
        monkeypatch.setattr(logging, setting, gathered, raising=False)
    logger = logging.getLogger(INVOCATIONS)
    seen: list[logging.LogRecord] = []

    class Catcher(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    catcher = Catcher()
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(catcher)
    try:
        fields = {"function": "f", "version": "$LATEST", "request_id": "r-1", "trigger": "sync", "attempt": 1,
                  "duration_ms": 0.5, "logs": "START RequestId: r-1\nEND RequestId: r-1\n"}
        # when one line is logged by info() and one by log_invocation
        logger.info("invocation %s", "success", extra=fields)
        log_invocation("success", fields)
    finally:
        logger.removeHandler(catcher)

    # then both records hold the same, but for their time, and both lines read the same
    made, copied = seen
    moment: tuple[str, ...] = ("created", "msecs", "relativeCreated")
    if gathered:      # the caller's file and line differ: info() is called from here, log_invocation from setup.py
        moment += ("pathname", "filename", "module", "lineno", "funcName")
    assert {key: value for key, value in vars(copied).items() if key not in moment} == \
           {key: value for key, value in vars(made).items() if key not in moment}
    assert copied.created >= made.created and copied.relativeCreated >= made.relativeCreated
    copied.created, copied.msecs = made.created, made.msecs
    for formatter in (TextFormatter(), JsonFormatter()):
        assert formatter.format(copied) == formatter.format(made)


_FIELDS = {"function": "f", "version": "$LATEST", "request_id": "r-1", "trigger": "sync", "attempt": 1,
           "duration_ms": 0.5, "logs": "START RequestId: r-1\nEND RequestId: r-1\n"}


def _as_configured(monkeypatch: pytest.MonkeyPatch, formatter: logging.Formatter) -> _Writes:
    """The root logger as configure() leaves it: one BatchedLines, here on a stream of the test's."""
    stream = _Writes()
    handler = BatchedLines(stream)
    handler.setFormatter(formatter)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logging.root, "level", logging.INFO)
    return stream


def _without_time(line: str) -> str:
    return line.split(" ", 1)[1] if not line.startswith("{") else str({**orjson.loads(line), "time": ""})


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_an_invocations_line_as_configured_is_the_one_info_writes(monkeypatch: pytest.MonkeyPatch,
                                                                  formatter: logging.Formatter) -> None:
    # given the server's logging as configured: log_invocation makes no record there
    stream = _as_configured(monkeypatch, formatter)
    # when one line is logged by info() and one by log_invocation (no event loop: each is written at once)
    logging.getLogger(INVOCATIONS).info("invocation %s", "success", extra=_FIELDS)
    log_invocation("success", _FIELDS)
    # then the two lines read the same but for their time
    made, direct = stream.writes
    assert made.endswith("\n") and direct.endswith("\n")
    assert _without_time(direct.rstrip("\n")) == _without_time(made.rstrip("\n"))
    stamp = direct.split(" ")[0] if formatter.__class__ is TextFormatter else orjson.loads(direct)["time"]
    assert len(stamp) == len("2023-11-14T22:13:20.250Z") and stamp.endswith("Z")


def test_a_handler_added_anywhere_still_gets_every_invocations_record(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the server's logging as configured, and then a handler of someone else's on the way (a test's, say)
    stream = _as_configured(monkeypatch, TextFormatter())
    seen: list[logging.LogRecord] = []

    class Catcher(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    runtime_logger = logging.getLogger("runtime")
    catcher = Catcher()
    runtime_logger.addHandler(catcher)
    try:
        # when an invocation is logged
        log_invocation("error", _FIELDS)
    finally:
        runtime_logger.removeHandler(catcher)
    # then that handler has its record, and the server's handler wrote its line as well
    [record] = seen
    assert record.getMessage() == "invocation error" and record.__dict__["request_id"] == "r-1"
    [line] = stream.writes
    assert "invocation error  function=f version=$LATEST request_id=r-1" in line
    # and when logging is turned off below WARNING, log_invocation writes nothing either
    logging.disable(logging.INFO)
    try:
        log_invocation("success", _FIELDS)
    finally:
        logging.disable(logging.NOTSET)
    assert len(stream.writes) == 1


def test_invocations_lines_as_configured_wait_for_their_batch_and_keep_their_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given the server's logging as configured, in a running event loop
    stream = _as_configured(monkeypatch, TextFormatter())

    async def run() -> list[str]:
        # when two invocations are logged, then another logger's line, then one more invocation
        log_invocation("success", {**_FIELDS, "request_id": "r-1"})
        log_invocation("success", {**_FIELDS, "request_id": "r-2"})
        waited = list(stream.writes)
        logging.getLogger("runtime.gateway.app").warning("deployed")
        log_invocation("success", {**_FIELDS, "request_id": "r-3"})
        await asyncio.sleep(BatchedLines.LINGER_S * 2)
        return waited

    # then nothing was written while they waited, the other line took the waiting ones with it, in order,
    # and the last went in a batch of its own
    assert asyncio.run(run()) == []
    first, last = stream.writes
    order = [line.split("request_id=")[1].split(" ")[0] if "request_id=" in line else line.split(": ", 1)[1]
             for line in first.splitlines() if not line.startswith("    |")]
    assert order == ["r-1", "r-2", "deployed"]
    assert "request_id=r-3" in last and "deployed" not in last


def test_a_waiting_invocations_line_is_written_by_whatever_formatter_the_handler_has_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given an invocation's line waiting for its batch, kept without a record
    stream = _as_configured(monkeypatch, TextFormatter())
    [handler] = logging.root.handlers

    async def run() -> None:
        log_invocation("success", _FIELDS)
        # when the handler is given another formatter before the batch is written
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(request_id)s %(attempt)s"))
        handler.flush()

    asyncio.run(run())
    # then the line is that formatter's, made of the same record
    assert stream.writes == [f"INFO {INVOCATIONS} invocation success r-1 1\n"]


def test_a_process_with_threads_is_told_its_jails_cannot_start_ahead(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from runtime.jail import mounts

    if os.geteuid() != 0 or mounts.in_private_namespace():
        pytest.skip("needs root, in a process not yet in a mount namespace of its own")
    # given a process that already runs a second thread
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        # when it asks for its private mount namespace
        with caplog.at_level(logging.WARNING, logger="runtime.jail.mounts"):
            entered = mounts.enter_private_namespace()
    finally:
        release.set()
        thread.join()
    # then it is refused, and the log says what that costs and what to do
    assert entered is False and not mounts.in_private_namespace()
    [record] = [r for r in caplog.records if r.name == "runtime.jail.mounts"]
    assert "cannot be started ahead" in record.getMessage() and "check_isolation" in record.getMessage()
    assert record.__dict__["threads"] >= 2


class _Writes(io.StringIO):
    """A stream that keeps each write() apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


def _handler() -> tuple[BatchedLines, _Writes]:
    stream = _Writes()
    handler = BatchedLines(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return handler, stream


def _line(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, "", 0, message, None, None)


def test_invocation_lines_of_an_event_loop_are_written_together_soon_after() -> None:
    handler, stream = _handler()

    async def run() -> list[str]:
        for index in range(3):
            handler.handle(_line(INVOCATIONS, logging.INFO, f"invocation {index}"))
        waited = list(stream.writes)
        await asyncio.sleep(BatchedLines.LINGER_S * 2)
        return waited

    assert asyncio.run(run()) == []              # nothing written while the loop runs on ...
    assert stream.writes == ["INFO invocation 0\nINFO invocation 1\nINFO invocation 2\n"]   # ... then one write


def test_any_other_line_is_written_at_once_after_the_waiting_ones() -> None:
    handler, stream = _handler()

    async def run() -> None:
        handler.handle(_line(INVOCATIONS, logging.INFO, "invocation 0"))
        handler.handle(_line("runtime.gateway.app", logging.INFO, "deployed"))
        handler.handle(_line(INVOCATIONS, logging.INFO, "invocation 1"))
        handler.handle(_line(INVOCATIONS, logging.WARNING, "a warning"))

    asyncio.run(run())
    assert stream.writes == ["INFO invocation 0\nINFO deployed\n", "INFO invocation 1\nWARNING a warning\n"]


def test_without_an_event_loop_and_at_flush_nothing_waits() -> None:
    handler, stream = _handler()
    handler.handle(_line(INVOCATIONS, logging.INFO, "from a thread without a loop"))
    assert stream.writes == ["INFO from a thread without a loop\n"]

    async def run() -> None:
        handler.handle(_line(INVOCATIONS, logging.INFO, "waiting"))
        handler.flush()                  # what the os._exit paths and logging's exit call

    asyncio.run(run())
    assert stream.writes[1:] == ["INFO waiting\n"]
