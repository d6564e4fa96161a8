"""What one invocation came to: a value, never an exception (in the spirit of rq's Result and arq's JobResult)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson


class Outcome(enum.Enum):
    SUCCESS = "success"
    ERROR = "error"            # the handler raised, or its result could not be marshalled
    INIT_ERROR = "init_error"  # the handler could not be imported
    TIMEOUT = "timeout"        # killed at the deadline: Sandbox.Timedout
    CRASH = "crash"            # the sandbox exited or ran out of memory: Runtime.ExitError / OutOfMemory
    THROTTLED = "throttled"    # the function is at its reserved concurrency; nothing ran

    @property
    def is_function_error(self) -> bool:
        """Lambda's X-Amz-Function-Error: the function ran (or tried to) and failed."""
        return self not in (Outcome.SUCCESS, Outcome.THROTTLED)


@dataclass(frozen=True, kw_only=True)
class InvocationResult:
    request_id: str
    function: str
    version: str                   # the label of what ran: $LATEST or the published number
    executed_version: str          # $LATEST or the number, as X-Amz-Executed-Version
    outcome: Outcome
    payload: bytes                 # JSON: the handler's result, or Lambda's error object
    logs: str                      # START ... END ... REPORT ..., as Lambda writes them
    duration_ms: float = 0.0
    init_ms: float | None = None   # set on a cold start
    max_memory_mb: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    @property
    def error(self) -> dict[str, Any] | None:
        if self.ok or self.outcome is Outcome.THROTTLED:
            return None
        value = orjson.loads(self.payload)
        return value if isinstance(value, dict) else None

    @property
    def error_type(self) -> str | None:
        error = self.error
        return error.get("errorType") if error else None
