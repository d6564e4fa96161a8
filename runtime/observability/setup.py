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
    return _stamp(record.created, record.msecs)


def _stamp(created: float, msecs: float) -> str:
    global _last_second
    second = int(created)
    cached = _last_second           # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(msecs):03d}Z"


class _Invocation:
    """An invocation's line as BatchedLines keeps it until its batch is written: what its record would hold
    apart from what every such record holds (the formatter's `invocation` makes the same text of it)."""

    __slots__ = ("created", "outcome", "fields")

    def __init__(self, created: float, outcome: str, fields: dict[str, Any]) -> None:
        self.created = created
        self.outcome = outcome
        self.fields = fields

    def record(self) -> logging.LogRecord:
        """The record it stands for (for a formatter that is not one of ours, set since it was kept)."""
        return _copied_record(self.created, self.outcome, self.fields)

    def stamp(self) -> str:
        return _stamp(self.created, _msecs(self.created))


def _direct_handler(logger: logging.Logger) -> BatchedLines | None:
    """The handler that alone would write `logger`'s INFO records, where what it makes of one needs no record:
    the one configure() installs on the root (a BatchedLines with a formatter of ours), no filter on the way,
    and no other handler or filter on `logger` or the loggers above it. None when anything else would see them
    (a handler a test adds, logging.disable(), a logger disabled by logging.config)."""
    if logging.root.manager.disable >= logging.INFO or logger.disabled:
        return None
    node: Any = logger
    while node.parent is not None:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    if node.filters or len(node.handlers) != 1:
        return None
    handler = node.handlers[0]
    if (type(handler) is not BatchedLines or handler.filters or handler.level > logging.INFO
            or type(handler.formatter) not in (TextFormatter, JsonFormatter)):
        return None
    return handler


_TEMPLATE: list[dict[str, Any]] = []      # what every record of log_invocation's holds, made on first use
_INVOCATIONS_LOGGER = logging.getLogger(INVOCATIONS)     # getLogger takes logging's lock: looked up once


def log_invocation(outcome: str, fields: dict[str, Any]) -> None:
    """`logging.getLogger(INVOCATIONS).info("invocation %s", outcome, extra=fields)`, for less (the caller has
    checked the logger is enabled for INFO). Where the handler configure() installs alone would write it, no
    record is made: the handler keeps the time, the outcome and `fields` until it writes its batch, and its
    formatter makes the line that the record would have given (TextFormatter.invocation). Timed in place on the
    gateway at c=32: this call 6.2 -> 4.0-4.5 us of a warm invocation, the line's share of its batch's write
    5.9 -> 3.2-4.5 us.
    Otherwise, where configure() has turned off what a record gathers of its caller, thread and process, every
    such record has the same attributes but its time, its argument and `fields`: the record is copied from one
    made once and handed to the logger's handle(), as info() does."""
    logger = _INVOCATIONS_LOGGER
    if (handler := _direct_handler(logger)) is not None:
        handler.keep(_Invocation(time.time(), outcome, fields))
        return
    if (logging._srcfile or logging.logThreads or logging.logProcesses or logging.logMultiprocessing
            or getattr(logging, "logAsyncioTasks", False)):        # Python 3.12's task name
        logger.info("invocation %s", outcome, extra=fields)
        return
    logger.handle(_copied_record(time.time(), outcome, fields))


def _copied_record(created: float, outcome: str, fields: dict[str, Any]) -> logging.LogRecord:
    """log_invocation's record made at `created`, copied from the one made once."""
    if not _TEMPLATE:
        # As Logger._log makes it without the caller's file and line.
        _TEMPLATE.append(vars(_INVOCATIONS_LOGGER.makeRecord(INVOCATIONS, logging.INFO, "(unknown file)", 0,
                                                             "invocation %s", ("",), None, "(unknown function)")))
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    template = _TEMPLATE[0]
    attributes.update(template)
    attributes["created"] = created
    attributes["msecs"] = _msecs(created)
    attributes["relativeCreated"] = template["relativeCreated"] + (created - template["created"]) * 1000
    attributes["args"] = (outcome,)
    attributes.update(fields)
    return record


def _msecs(created: float) -> float:
    """LogRecord's msecs of a record made at `created`."""
    return int((created - int(created)) * 1000) + 0.0


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = _text_line(_timestamp(record), record.levelname, record.name, record.getMessage(), _fields(record))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def invocation(self, line: _Invocation) -> str:
        """The text of log_invocation's record of `line`, made without it."""
        return _text_line(line.stamp(), "INFO", INVOCATIONS, f"invocation {line.outcome}", line.fields)


def _text_line(stamp: str, level: str, name: str, message: str, fields: dict[str, Any]) -> str:
    text = " ".join(f"{key}={value}" for key, value in fields.items() if key != "logs")
    line = f"{stamp} {level:<7} {name}: {message}"
    if text:
        line += f"  {text}"
    if (logs := fields.get("logs")):
        line += "\n    | " + str(logs).rstrip("\n").replace("\n", "\n    | ")
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _timestamp(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), **_fields(record)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def invocation(self, line: _Invocation) -> str:
        """The JSON of log_invocation's record of `line`, made without it."""
        return orjson.dumps({"time": line.stamp(), "level": "INFO",
                             "logger": INVOCATIONS, "message": f"invocation {line.outcome}", **line.fields},
                            default=str).decode()


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
        self._waiting: list[logging.LogRecord | _Invocation] = []

    def emit(self, record: logging.LogRecord) -> None:      # called with self.lock held (Handler.handle)
        if record.name == INVOCATIONS and record.levelno <= logging.INFO and self._wait(record):
            return
        self._write([record])

    def keep(self, line: _Invocation) -> None:
        """An invocation's line from log_invocation, which found this handler the only one to write it."""
        self.acquire()
        try:
            if not self._wait(line):
                self._write([line])
        finally:
            self.release()

    def _wait(self, line: logging.LogRecord | _Invocation) -> bool:
        """Whether `line` waits for its batch (lock held); if not, it is to be written now, after those waiting."""
        waiting = self._waiting
        if waiting:
            if line.created - waiting[0].created < self.LINGER_S and len(waiting) < self.MAX_LINES:
                waiting.append(line)
                return True
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        waiting.append(line)
        loop.call_later(self.LINGER_S, self.flush)
        return True

    def flush(self) -> None:
        self.acquire()
        try:
            if self._waiting:
                self._write([])
            else:
                super().flush()
        finally:
            self.release()

    def _write(self, lines: list[logging.LogRecord | _Invocation]) -> None:
        """The waiting lines, then these, in one write (lock held)."""
        texts = []
        for line in (*self._waiting, *lines):
            try:
                if isinstance(line, _Invocation):
                    invocation = getattr(self.formatter, "invocation", None)
                    text = invocation(line) if invocation is not None else self.format(line.record())
                else:
                    text = self.format(line)
                texts.append(text + self.terminator)
            except Exception:
                self.handleError(_record_of(line))
        self._waiting = []
        try:
            self.stream.write("".join(texts))
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(_record_of(lines[-1]) if lines else logging.makeLogRecord({"msg": "log lines"}))


def _record_of(line: logging.LogRecord | _Invocation) -> logging.LogRecord:
    return line.record() if isinstance(line, _Invocation) else line


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
