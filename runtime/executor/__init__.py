"""The host side of sandboxes: warm pools, timeouts, memory limits, crashes, concurrency."""

from .executor import Busy, Executor
from .result import InvocationResult, Outcome

__all__ = ["Busy", "Executor", "InvocationResult", "Outcome"]
