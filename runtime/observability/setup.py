"""Server logging: readable text by default, JSON lines when configured; structured fields either way.

Lines are written in batches (`BatchingHandler`): a warm invocation logs a line, and a write() per line was
a good part of the gateway's CPU per call. A line of WARNING or above is written at once, with every line
before it, so that the log keeps its order and a problem is never held back; the others within 50 ms.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import orjson

# Attributes every LogRecord has; anything else was passed in `extra=` and is a structured field.
_STANDARD = (set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
             | {"message", "asctime", "taskName", "color_message"})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


_second: list[Any] = [None, ""]       # the last second formatted, and its text: strftime once a second


def _timestamp(record: logging.LogRecord) -> str:
    second = int(record.created)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items() if key != "logs")
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if (logs := getattr(record, "logs", None)):
            line += "\n" + "\n".join(f"    | {text}" for text in str(logs).rstrip("\n").split("\n"))
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


class BatchingHandler(logging.Handler):
    """Formats each record when it is logged, and writes the lines in one write() per batch: at once for
    WARNING and above (with the lines before it), else within `linger_s` (a thread of its own does that,
    which sleeps while nothing waits), at `max_lines`, and at exit (logging.shutdown flushes every handler)."""

    def __init__(self, stream: TextIO, *, linger_s: float = 0.05, max_lines: int = 256) -> None:
        super().__init__()
        self._fd = stream.fileno()
        self._stream = stream
        self._linger_s = linger_s
        self._max_lines = max_lines
        self._lines: list[str] = []
        self._waiting = threading.Event()       # set while lines wait for the flusher thread
        self._start_flusher()
        os.register_at_fork(after_in_child=self._start_flusher)    # a forked child has no thread but its own
        atexit.register(self.flush)

    def _start_flusher(self) -> None:
        threading.Thread(target=self._run, name="log-flusher", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self.lock:     # type: ignore[union-attr]    # logging.Handler's own lock, made in __init__
            self._lines.append(line)
            if record.levelno < logging.WARNING and len(self._lines) < self._max_lines:
                if len(self._lines) == 1:
                    self._waiting.set()
                return
            self._write_locked()

    def flush(self) -> None:
        with self.lock:     # type: ignore[union-attr]
            self._write_locked()

    def _write_locked(self) -> None:
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode("utf-8", "backslashreplace")
        self._lines.clear()
        self._waiting.clear()
        try:
            self._stream.flush()        # anything written to the stream itself goes first
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            pass                        # stderr closed or full disk: as StreamHandler, nothing else to do

    def _run(self) -> None:
        while True:
            self._waiting.wait()
            time.sleep(self._linger_s)
            self.flush()


def configure(*, level: str = "INFO", fmt: str = "text") -> None:
    # What no line of ours prints is not gathered per record (the logging HOWTO's "Optimization"): the caller's
    # file and line, the thread's and the process's names. A fifth of a line's cost.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler: logging.Handler = BatchingHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
