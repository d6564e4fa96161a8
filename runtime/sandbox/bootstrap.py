"""The code that runs *inside* a sandbox process: import the handler once, then serve invocations.

Started by the executor with `python -I -S`, which loads this file under the name `_lambent_sandbox`
(from its cached bytecode), so that only the function's own folder and the standard library are
importable. It must use the standard library alone.

Wire protocol, both directions, over the process's original stdin and stdout (which are then
pointed elsewhere so that user code cannot corrupt the stream): a frame is two big-endian u32
lengths, a JSON header of the first length and a payload of the second.

  host -> sandbox   init      {"handler", "task_root", "path", "memory_mb", "env"}
  sandbox -> host   ready     {"t": "ready", "init_ms"}   or   {"t": "init_error", "error"}
  host -> sandbox   invoke    {"id", "deadline_ms", "arn", ..., "poll_us"?}  payload: the event as JSON
  sandbox -> host   log       {"t": "log", "text"}  (any number, while the invocation runs)
  sandbox -> host   result    {"t": "result", "ok", "error"?, "duration_ms", "max_rss_kb", "out"}  payload: JSON

fds 1 and 2 are a memory file the host made: what child processes, C extensions or faulthandler write
there is read into the invocation's log when it ends (`out`: how far it has been read; after a crash the
host reads the rest).
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import resource
import struct
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # typing costs milliseconds of every cold start; annotations only need it for mypy
    from typing import Any, BinaryIO, Callable

# The frame codec, the one both ends use (the host imports this module: executor/process.py).
FRAME_LENGTHS = struct.Struct(">II")   # a frame starts with its header's and its payload's length


def pack_frame(header_json: bytes, payload: bytes = b"") -> bytes:
    """A frame of an already encoded header (the host encodes with orjson, this side with json)."""
    return FRAME_LENGTHS.pack(len(header_json), len(payload)) + header_json + payload


# Made once: json.dumps() and json.loads() with any argument of their own build an encoder or decoder per call.
_encode_compact = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    return pack_frame(_encode_compact(header).encode(), payload)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    lengths = _read_exactly(stream, FRAME_LENGTHS.size)
    if lengths is None:
        return None
    header_len, payload_len = FRAME_LENGTHS.unpack(lengths)
    body = _read_exactly(stream, header_len + payload_len)
    if body is None:
        return None
    return _decode(body[:header_len].decode()), body[header_len:]


class _Channel:
    """The sandbox's end of the pipe to the host; writes are whole frames, safe across threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        data = memoryview(encode_frame(header, payload))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data):]


class _Capture(io.TextIOBase):
    """sys.stdout and sys.stderr: what the handler prints goes to the host as log frames, line by line."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._parts: list[str] = []
        self._size = 0
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 2        # for code that writes to the descriptor itself (faulthandler.enable()): read back too

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            if "\n" in text or self._size > 8192:
                self._flush_locked()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._channel.send({"t": "log", "text": text})


class _FdOutput:
    """What is written to fds 1 and 2 below Python's sys.stdout (children, C code): read into the log."""

    TRUNCATE_AT = 1 << 20       # past this the file starts again from 0 (what a background child writes at
                                # that moment may be lost), so that it never grows without end

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self.seen = 0               # from the start: what the jail's launcher or the interpreter wrote is init's
        try:
            os.lseek(fd, 0, os.SEEK_CUR)
            self._on = True
        except OSError:             # a pipe or a terminal, not the host's memory file: nothing to read back
            self._on = False

    def collect(self, stream: _Capture) -> None:
        if not self._on:
            return
        end = os.lseek(self._fd, 0, os.SEEK_CUR)    # where the next write lands: fds 1 and 2 share the offset
        if end > self.seen:
            stream.write(os.pread(self._fd, end - self.seen, self.seen).decode(errors="replace"))
            self.seen = end
        if end > self.TRUNCATE_AT:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            self.seen = 0


class _TraceEnv:
    """`_X_AMZN_TRACE_ID` of each invocation, in os.environ and in the C environment (child processes, C code),
    as Lambda's runtime sets it, without memory that grows per invocation: glibc's setenv(), which os.environ
    calls, keeps every distinct value it was given for the life of the process (~140 bytes an invocation, as
    every trace id is new: a busy warm sandbox would reach its memory limit within hours). Instead one buffer of
    this process is put into the C environment (putenv() keeps the pointer, it copies nothing) and overwritten
    in place, and os.environ's own mapping (CPython's os._Environ: `_data`, `encodekey`, `encodevalue`) is
    updated without its setenv(). Where that cannot be done (no ctypes, another os.environ, a value too long)
    os.environ[...] is used, as before.
    """

    NAME = "_X_AMZN_TRACE_ID"
    SIZE = 256                  # bytes for the value; the host's headers have 74 (runtime/events/trace.py)

    def __init__(self) -> None:
        self._buffer: Any = None
        self._value_at = 0
        self._libc: Any = None
        self._key = self.NAME.encode()
        try:
            import ctypes       # here, before init: a jail started ahead of time has it loaded already
            environ: Any = os.environ
            if (callable(getattr(environ, "encodekey", None)) and callable(getattr(environ, "encodevalue", None))
                    and isinstance(getattr(environ, "_data", None), dict)):
                self._libc = ctypes.CDLL(None)
                self._libc.getenv.restype = ctypes.c_void_p
                self._buffer = ctypes.create_string_buffer(len(self._key) + 1 + self.SIZE)
                self._value_at = ctypes.addressof(self._buffer) + len(self._key) + 1
        except (ImportError, OSError, AttributeError):
            self._buffer = None

    def set(self, value: str) -> None:
        if os.environ.get(self.NAME) == value:
            return
        raw = value.encode()
        if self._buffer is None or len(raw) >= self.SIZE or b"\0" in raw:
            os.environ[self.NAME] = value
            return
        self._buffer.value = self._key + b"=" + raw
        if self._libc.getenv(self._key) != self._value_at:   # the first time, or user code set or removed it
            self._libc.putenv(self._buffer)
        environ: Any = os.environ
        environ._data[environ.encodekey(self.NAME)] = environ.encodevalue(value)


class LambdaContext:
    """The `context` argument, with the attributes and methods of Lambda's Python runtime (awslambdaric)."""

    def __init__(self, *, request_id: str, deadline_ms: int, invoked_function_arn: str, function_version: str,
                 client_context: Any = None, identity: Any = None, attempt: int = 1) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = function_version
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.tenant_id = None
        # As Lambda: the caller's ClientContext as an object (its `w3c` trace fields taken out, for w3c()), and
        # an identity object always, whose fields are None unless a Cognito identity came with the call.
        self._w3c = _w3c_fields(client_context)
        self.client_context = _from_dict(ClientContext, client_context)
        if self.client_context is not None:
            self.client_context.client = _from_dict(Client, self.client_context.client)
        self.identity = CognitoIdentity()
        if isinstance(identity, dict):
            self.identity.cognito_identity_id = identity.get("cognitoIdentityId")
            self.identity.cognito_identity_pool_id = identity.get("cognitoIdentityPoolId")
        self.attempt = attempt          # Lambent's addition: 1 on the first try of an async event, then 2, 3
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def w3c(self) -> dict[str, str]:
        """The W3C trace context (traceparent, tracestate, baggage) the caller sent in its ClientContext."""
        return dict(self._w3c)

    def log(self, message: str) -> None:
        sys.stdout.write(str(message))

    def __repr__(self) -> str:
        return (f"LambdaContext([aws_request_id={self.aws_request_id},log_group_name={self.log_group_name},"
                f"log_stream_name={self.log_stream_name},function_name={self.function_name},"
                f"memory_limit_in_mb={self.memory_limit_in_mb},function_version={self.function_version},"
                f"invoked_function_arn={self.invoked_function_arn},client_context={self.client_context},"
                f"identity={self.identity},tenant_id={self.tenant_id}])")


class _Fields:
    """An object of the named attributes, None where not given; printed as Lambda's runtime prints it."""
    __slots__: tuple[str, ...] = ()

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)

    def __repr__(self) -> str:
        fields = ",".join(f"{name}={getattr(self, name)}" for name in self.__slots__)
        return f"{type(self).__name__}([{fields}])"


class CognitoIdentity(_Fields):
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")
    cognito_identity_id: str | None
    cognito_identity_pool_id: str | None


class Client(_Fields):
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")


class ClientContext(_Fields):
    __slots__ = ("custom", "env", "client")
    client: Any


def _from_dict(cls: type[_Fields], values: Any) -> Any:
    if not isinstance(values, dict):
        return None
    obj = cls()
    for name in cls.__slots__:
        setattr(obj, name, values.get(name))
    return obj


def _w3c_fields(client_context: Any) -> dict[str, str]:
    """Pop `w3c` out of a ClientContext: its string traceparent, tracestate and baggage."""
    if not isinstance(client_context, dict) or not isinstance(w3c := client_context.pop("w3c", None), dict):
        return {}
    return {key: value for key in ("traceparent", "tracestate", "baggage")
            if isinstance(value := w3c.get(key), str)}


class _RequestIdFilter(logging.Filter):
    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = _RequestIdFilter.request_id
        return True


def _install_logging(stream: _Capture, *, log_format: str | None, level: str | None) -> None:
    """As Lambda's runtime: the root logger writes `[LEVEL] time request-id message` lines, UTC, or with the JSON
    log format one JSON object a line; AWS_LAMBDA_LOG_LEVEL sets its level (TRACE is DEBUG, as there)."""
    handler = logging.StreamHandler(stream)
    if log_format == "JSON":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter("[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
                                      "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = {"TRACE": "DEBUG"}.get((level or "").upper(), (level or "").upper())
    if isinstance(logging.getLevelName(level), int):
        root.setLevel(level)


# LogRecord attributes that are not a caller's `extra` fields (the JSON format writes those as keys of their own).
_RECORD_FIELDS = frozenset({"name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
                            "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
                            "relativeCreated", "thread", "threadName", "processName", "process", "taskName",
                            "aws_request_id", "message", "asctime"})


class _JsonFormatter(logging.Formatter):
    """Lambda's JSON application log line: timestamp, level, message, logger, requestId, and for an exception
    errorType, errorMessage, stackTrace and location; a caller's `extra` fields are keys too."""

    def format(self, record: logging.LogRecord) -> str:
        moment = time.gmtime(record.created)
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(record.msecs):03d}Z",
            "level": logging.getLevelName(min(50, max(0, record.levelno)) // 10 * 10),
            "message": record.getMessage(), "logger": record.name,
            "requestId": getattr(record, "aws_request_id", None) or None}
        if record.exc_info and record.exc_info[0] is not None:
            line.update(errorType=record.exc_info[0].__name__, errorMessage=str(record.exc_info[1]),
                        stackTrace=traceback.format_tb(record.exc_info[2]),
                        location=f"{record.pathname}:{record.funcName}:{record.lineno}")
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        return json.dumps({key: value for key, value in line.items() if value is not None}, default=str,
                          ensure_ascii=False)


def _fault(error_type: str, message: str, frames: list[str] | None = None) -> dict[str, Any]:
    return {"errorType": error_type, "errorMessage": message, "stackTrace": frames or []}


def _user_frames(exc: BaseException) -> list[str]:
    """The traceback without the runtime's own frames, formatted as Lambda's stackTrace."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__]
    return traceback.format_list(frames)


def _load_handler(spec: str) -> Callable[..., Any]:
    """Import `module.attribute`, raising a fault with Lambda's error types when it cannot."""
    try:
        module_name, attribute = spec.rsplit(".", 1)
    except ValueError:
        raise _Fault(_fault("Runtime.MalformedHandlerName",
                            f"Bad handler '{spec}': not enough values to unpack (expected 2, got 1)")) from None
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _Fault(_fault("Runtime.ImportModuleError",
                            f"Unable to import module '{module_name}': {exc}", _user_frames(exc))) from None
    except SyntaxError as exc:
        raise _Fault(_fault("Runtime.UserCodeSyntaxError",
                            f"Syntax error in module '{module_name}': {exc}", _user_frames(exc))) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise _Fault(_fault(type(exc).__name__, str(exc), _user_frames(exc))) from None
    handler = getattr(module, attribute, None)
    if handler is None or not callable(handler):
        raise _Fault(_fault("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'"))
    return handler


class _Fault(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["errorMessage"])
        self.error = error


def _to_json_default(value: Any) -> Any:
    import decimal     # only when a result holds something json cannot write: not on every cold start

    if isinstance(value, decimal.Decimal):   # as awslambdaric: Decimals are numbers
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encode_result = json.JSONEncoder(default=_to_json_default, separators=(",", ":")).encode


_JSON_LOGS: list[bool] = []    # [True] when AWS_LAMBDA_LOG_FORMAT is JSON (set once, at init)


def _log_error(stream: _Capture, error: dict[str, Any]) -> None:
    if _JSON_LOGS:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        stream.write(json.dumps({"timestamp": stamp, "level": "ERROR", **error}, ensure_ascii=False) + "\n")
        stream.flush()
        return
    stream.write(f"[ERROR] {error['errorType']}: {error['errorMessage']}\n")
    if error["stackTrace"]:
        stream.write("Traceback (most recent call last):\n" + "".join(error["stackTrace"]))
    stream.flush()


def _call(handler: Callable[..., Any], payload: bytes,
          context: LambdaContext) -> tuple[bytes, dict[str, Any] | None, bool]:
    """Run the handler: (result JSON, None, False), or (b"", Lambda's error, fatal?)."""
    try:
        event = json.loads(payload) if payload.strip() else {}
    except (ValueError, RecursionError) as exc:   # too deep for json: an error of the input, not a crash
        return b"", _fault("Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}"), False
    out_of_memory = _fault("Runtime.OutOfMemory", "Runtime exited: the function ran out of memory "
                           f"(memory_mb: {context.memory_limit_in_mb})")
    try:
        result = handler(event, context)
    except MemoryError:
        return b"", out_of_memory, True
    except Exception as exc:
        return b"", _fault(type(exc).__name__, str(exc), _user_frames(exc)), False
    try:
        return _encode_result(result).encode(), None, False
    except MemoryError:
        return b"", out_of_memory, True
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        return b"", _fault("Runtime.MarshalError", f"Unable to marshal response: {exc}"), False


def _invoke(handler: Callable[..., Any], channel: _Channel, stream: _Capture, output: _FdOutput, trace: _TraceEnv,
            header: dict[str, Any], payload: bytes) -> None:
    request_id = header["id"]
    _RequestIdFilter.request_id = request_id
    trace.set(header.get("trace_id", ""))
    context = LambdaContext(request_id=request_id, deadline_ms=header["deadline_ms"],
                            invoked_function_arn=header["arn"], function_version=header["version"],
                            client_context=header.get("client_context"), identity=header.get("identity"),
                            attempt=header.get("attempt", 1))
    started, (cpu_started, queued_started) = time.perf_counter(), _sched_ns()
    body, error, fatal = _call(handler, payload, context)
    duration_ms = (time.perf_counter() - started) * 1000.0
    cpu_ns, queued_ns = _sched_ns()
    output.collect(stream)
    if error is not None:
        error["requestId"] = request_id
        _log_error(stream, error)
    stream.flush()
    reply: dict[str, Any] = {"t": "result", "ok": error is None, "duration_ms": duration_ms,
                             "cpu_ms": (cpu_ns - cpu_started) / 1e6, "queued_ms": (queued_ns - queued_started) / 1e6,
                             "max_rss_kb": _peak_kb(), "out": output.seen}
    if error is not None:
        reply["error"] = error
        reply["fatal"] = fatal
    channel.send(reply, body)
    if fatal:
        os._exit(137)   # a process that ran out of memory is not trusted with the next invocation


_STATUS: list[Any] = []     # /proc/self/status, opened once and re-read (reopening it costs ~20 µs a call)


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB. VmHWM, not ru_maxrss: the latter keeps the peak of the
    forked server process from before exec, so it would report the server's memory, not ours."""
    try:
        if not _STATUS:
            _STATUS.append(open("/proc/self/status", "rb", buffering=0))
        handle = _STATUS[0]
        handle.seek(0)
        text = handle.read(8192)
        start = text.index(field.encode()) + len(field)
        return int(text[start:text.index(b"kB", start)])
    except (OSError, ValueError):
        return 0


_PEAK_BY_RUSAGE: list[bool] = []   # [True]: getrusage's peak is this process's own (decided at init)


def _peak_kb() -> int:
    """The process's peak resident memory in kB (Lambda's Max Memory Used): /proc/self/status's VmHWM, or
    getrusage's ru_maxrss (a fifth of the cost) where that is the same number. ru_maxrss is the larger of VmHWM
    and the peak of the process it was before exec(); when, at init, it is no larger than VmHWM, that earlier
    peak is below VmHWM for good (which only grows), and the two are equal from then on. (Started without a
    jail from a large server process, the earlier peak is the server's: VmHWM is read then.)"""
    if _PEAK_BY_RUSAGE:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return _status_kb("VmHWM:")


def _choose_peak_source() -> None:
    peak = _status_kb("VmHWM:")
    if 0 < resource.getrusage(resource.RUSAGE_SELF).ru_maxrss <= peak:
        _PEAK_BY_RUSAGE.append(True)


SCHEDSTAT = "/proc/thread-self/schedstat"     # of the thread that opens it: its time on a CPU, then waiting for one
_SCHEDSTAT: list[int] = []   # a descriptor of SCHEDSTAT, opened once


def waited_for_cpu_ns(schedstat: int) -> int:
    """From a descriptor of SCHEDSTAT: how long its thread was runnable but waiting for a CPU so far, in ns
    (the host reads its own too: executor/process.py, _cpu_contended)."""
    return int(os.pread(schedstat, 128, 0).split()[1])


def _sched_ns() -> tuple[int, int]:
    """This thread's time on a CPU and time runnable but waiting for one, in ns, so far. The host tells a
    handler that computes from one that waits on I/O by them: CPU / (duration - time waiting for a CPU).
    (schedstat's own CPU time is only brought up to date at scheduler ticks: the clock is exact.)"""
    try:
        if not _SCHEDSTAT:
            _SCHEDSTAT.append(os.open(SCHEDSTAT, os.O_RDONLY))
        queued = waited_for_cpu_ns(_SCHEDSTAT[0])
    except (OSError, ValueError, IndexError):
        queued = 0
    return time.thread_time_ns(), queued


_POLLER: list[Any] = []      # a select.poll() of the input, made on first use


def _poll_input(fd: int, budget_s: float) -> None:
    """Poll the input for the next invocation for up to `budget_s` before the read sleeps. The host asks for it
    (`poll_us`) when it awaits this answer alone and its calls have come one after another, so the next is
    likely to come soon (it polls for the answer itself): a sleeping process's wake-up costs more than a fast
    handler's run on a virtual machine. Nothing of the next frame is buffered yet: the host sends it only after
    this answer."""
    if not _POLLER:
        import select
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        _POLLER.append(poller)
    poll = _POLLER[0].poll
    end = time.perf_counter() + budget_s
    while not poll(0) and time.perf_counter() < end:
        os.sched_yield()            # the host, if it waits for this CPU, runs first


def main() -> None:
    # Keep the protocol pipes on fresh descriptors; fd 0 reads nothing and fd 1 joins fd 2, so that a
    # stray os.write(1, ...) or a child process cannot corrupt the frame stream.
    inbound = os.fdopen(os.dup(0), "rb", buffering=1 << 16)   # buffered: a frame is usually one read()
    channel = _Channel(os.dup(1))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    trace = _TraceEnv()
    first = read_frame(inbound)
    if first is None:
        return
    init, _ = first
    # The function's environment: a jail started ahead of time knew only Lambda's fixed variables.
    os.environ.clear()
    os.environ.update(init["env"])
    time.tzset()
    # memory_mb caps what the function adds to the bare interpreter's address space.
    limit = (int(init["memory_mb"]) * 1024 + (_status_kb("VmSize:") or 32 * 1024)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdlib = [path for path in sys.path if path and not path.endswith("site-packages")]
    sys.path[:] = [init["task_root"], *init.get("path", []), *stdlib]
    os.chdir(init["task_root"])
    stream = _Capture(channel)
    sys.stdout = sys.stderr = stream
    log_format = os.environ.get("AWS_LAMBDA_LOG_FORMAT")
    if log_format == "JSON":
        _JSON_LOGS.append(True)
    _install_logging(stream, log_format=log_format, level=os.environ.get("AWS_LAMBDA_LOG_LEVEL"))
    output = _FdOutput()
    _choose_peak_source()
    started = time.perf_counter()
    try:
        handler = _load_handler(init["handler"])
    except _Fault as fault:
        output.collect(stream)
        _log_error(stream, fault.error)
        channel.send({"t": "init_error", "error": fault.error, "init_ms": (time.perf_counter() - started) * 1000,
                      "out": output.seen})
        return
    except MemoryError:
        error = _fault("Runtime.OutOfMemory", "Runtime exited: the function ran out of memory during init")
        channel.send({"t": "init_error", "error": error, "init_ms": (time.perf_counter() - started) * 1000})
        return
    output.collect(stream)
    stream.flush()
    channel.send({"t": "ready", "init_ms": (time.perf_counter() - started) * 1000, "out": output.seen})
    while (frame := read_frame(inbound)) is not None:
        _invoke(handler, channel, stream, output, trace, *frame)
        if poll_us := frame[0].get("poll_us"):
            _poll_input(inbound.fileno(), poll_us / 1e6)


if __name__ == "__main__":
    main()
