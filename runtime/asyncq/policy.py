"""When an async invocation is tried again, and when it is given up: Lambda's rules as a value object."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..events.destination import CONDITION_EVENT_AGE_EXCEEDED, CONDITION_RETRIES_EXHAUSTED
from ..executor.result import Outcome
from ..functions.spec import AsyncSpec
from .record import Status

MAX_THROTTLE_DELAY_S = 60.0


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Checked on construction (as rq's Retry): attempts 0..2, delays >= 0, event age 60 s..6 h."""
    max_retry_attempts: int
    retry_delays_s: tuple[float, ...]
    max_event_age_s: float
    jitter: float = 0.1                 # each delay is scaled by a factor in [1 - jitter, 1 + jitter]
    throttle_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_retry_attempts <= 2:
            raise ValueError("max_retry_attempts must be 0, 1 or 2")
        if any(delay < 0 for delay in self.retry_delays_s):
            raise ValueError("retry delays must be zero or more seconds")
        if self.max_event_age_s <= 0:
            raise ValueError("max_event_age must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @classmethod
    def of(cls, spec: AsyncSpec, *, throttle_delay_s: float) -> RetryPolicy:
        return cls(max_retry_attempts=spec.max_retry_attempts, retry_delays_s=spec.retry_delays_s,
                   max_event_age_s=spec.max_event_age_s, throttle_delay_s=throttle_delay_s)

    def retry_delay_s(self, attempt: int) -> float:
        """Delay before the retry that follows attempt number `attempt` (1-based), with jitter."""
        if not self.retry_delays_s:
            return 0.0
        base = self.retry_delays_s[min(attempt, len(self.retry_delays_s)) - 1]
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def throttle_delay(self, throttles: int) -> float:
        """Throttled events back off from throttle_delay_s, doubling, to a minute."""
        base = min(self.throttle_delay_s * 2 ** max(throttles - 1, 0), MAX_THROTTLE_DELAY_S)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True, kw_only=True)
class Decision:
    status: Status
    due_ms: int | None = None           # when the next attempt runs (retrying / throttled)
    condition: str | None = None        # why it was dead-lettered


def decide(outcome: Outcome, *, policy: RetryPolicy, attempts: int, throttles: int, received_ms: int,
           now_ms: int) -> Decision:
    """What follows an attempt. `attempts` counts handler runs so far, this one included."""
    expires_ms = received_ms + int(policy.max_event_age_s * 1000)
    if outcome is Outcome.SUCCESS:
        return Decision(status=Status.SUCCEEDED)
    if outcome is Outcome.THROTTLED:
        due = now_ms + int(policy.throttle_delay(throttles) * 1000)
    elif attempts > policy.max_retry_attempts:
        return Decision(status=Status.DEAD_LETTERED, condition=CONDITION_RETRIES_EXHAUSTED)
    else:
        due = now_ms + int(policy.retry_delay_s(attempts) * 1000)
    if due >= expires_ms:
        return Decision(status=Status.DEAD_LETTERED, condition=CONDITION_EVENT_AGE_EXCEEDED)
    return Decision(status=Status.RETRYING if outcome is not Outcome.THROTTLED else Status.QUEUED, due_ms=due)
