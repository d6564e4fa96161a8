"""Server logging: readable text by default, JSON lines when configured; structured fields either way."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

import orjson

# Attributes every LogRecord has; anything else was passed in `extra=` and is a structured field.
_STANDARD = (set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
             | {"message", "asctime", "taskName", "color_message"})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


INVOCATIONS = "runtime.executor.invocations"     # the logger of the line each invocation writes (batched)

_last_second: tuple[int, str] = (-1, "")      # the last second formatted, and its text: strftime once a second


def _timestamp(record: logging.LogRecord) -> str:
    global _last_second
    second = int(record.created)
    cached = _last_second           # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(record.msecs):03d}Z"


_TEMPLATE: list[dict[str, Any]] = []      # what every record of log_invocation's holds, made on first use


def log_invocation(outcome: str, fields: dict[str, Any]) -> None:
    """`logging.getLogger(INVOCATIONS).info("invocation %s", outcome, extra=fields)`, for less. Where configure()
    has turned off what a record gathers of its caller, thread and process, every such record has the same
    attributes but its time, its argument and `fields`: the record is copied from one made once and handed to
    the logger's handle(), as info() does. Making it was half of the line's cost on the gateway's hot path
    (9 us of a warm call at c=32)."""
    logger = logging.getLogger(INVOCATIONS)
    if (logging._srcfile or logging.logThreads or logging.logProcesses or logging.logMultiprocessing
            or getattr(logging, "logAsyncioTasks", False)):        # Python 3.12's task name
        logger.info("invocation %s", outcome, extra=fields)
        return
    if not _TEMPLATE:
        # As Logger._log makes it without the caller's file and line.
        _TEMPLATE.append(vars(logger.makeRecord(INVOCATIONS, logging.INFO, "(unknown file)", 0, "invocation %s",
                                                ("",), None, "(unknown function)")))
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    template = _TEMPLATE[0]
    attributes.update(template)
    now = time.time()
    attributes["created"] = now
    attributes["msecs"] = int((now - int(now)) * 1000) + 0.0
    attributes["relativeCreated"] = template["relativeCreated"] + (now - template["created"]) * 1000
    attributes["args"] = (outcome,)
    attributes.update(fields)
    logger.handle(record)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items() if key != "logs")
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if (logs := getattr(record, "logs", None)):
            line += "\n    | " + str(logs).rstrip("\n").replace("\n", "\n    | ")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _timestamp(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), **_fields(record)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BatchedLines(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes the line of each invocation (INFO, logger INVOCATIONS) in batches: one write of
    the lines that came within LINGER_S (or MAX_LINES of them), where a plain StreamHandler writes and flushes each.
    On the gateway's hot path that line cost a fifth of its CPU per warm call, about half of it in being written
    alone.
    Every other line is written at once, as before.

    Only a thread that runs an event loop batches (its loop writes the batch). Any other line, a batch older than
    LINGER_S, and flush() first write what waits, then their own line: the order of the lines holds, and nothing
    waits longer than LINGER_S while the loop runs. What still waits when the process ends is written by logging's
    exit flush, and by the os._exit paths, which flush the handlers. No thread of its own: a process that is still
    single-threaded may enter a mount namespace (jail.mounts)."""

    LINGER_S = 0.05
    MAX_LINES = 256

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:      # called with self.lock held (Handler.handle)
        waiting = self._waiting
        if record.name == INVOCATIONS and record.levelno <= logging.INFO:
            if waiting and record.created - waiting[0].created < self.LINGER_S and len(waiting) < self.MAX_LINES:
                waiting.append(record)
                return
            if not waiting:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    waiting.append(record)
                    loop.call_later(self.LINGER_S, self.flush)
                    return
        self._write([record])

    def flush(self) -> None:
        self.acquire()
        try:
            if self._waiting:
                self._write([])
            else:
                super().flush()
        finally:
            self.release()

    def _write(self, records: list[logging.LogRecord]) -> None:
        """The waiting records, then these, in one write (lock held)."""
        lines = []
        for record in (*self._waiting, *records):
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
        self._waiting = []
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(records[-1] if records else logging.makeLogRecord({"msg": "log lines"}))


def configure(*, level: str = "INFO", fmt: str = "text") -> None:
    # What no line of ours prints is not gathered per record (the logging HOWTO's "Optimization"): the caller's
    # file and line, the thread's and the process's names. A fifth of a line's cost.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False     # type: ignore[attr-defined]  # Python 3.12 on: the task's name
    handler = BatchedLines(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
