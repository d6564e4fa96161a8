"""The host side of sandboxes: warm pools, timeouts, memory limits, crashes, concurrency.

executor (the facade the roles use), pool (which sandbox runs an invocation), framing (Lambda's outcome,
errors and log lines), launcher (code preparation and a sandbox's start), process (one sandbox process),
prestart (jails started ahead of time), cpus (separate_cpu), concurrency (reserved concurrency), result.
"""

from .cpus import pin_server_cpu
from .executor import Executor
from .pool import Busy
from .result import InvocationResult, Outcome

__all__ = ["Busy", "Executor", "InvocationResult", "Outcome", "pin_server_cpu"]
