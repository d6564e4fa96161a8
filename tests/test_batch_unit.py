"""BatchRun's logic in-process, in seconds, with no Kafka: bisect, partial failures, retries, on_failure.

The function is a fake (`FakeTargets`, in the spirit of dramatiq's StubBroker): it records every event it is
invoked with and answers as the test scripts it. tests/test_streams.py proves the same through real consumers.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import orjson
import pytest

from runtime.config import Config
from runtime.executor import Busy, InvocationResult, Outcome
from runtime.functions.catalog import NotFound
from runtime.functions.spec import Destination, KafkaEvent
from runtime.observability.outage import RedisHealth
from runtime.streams.batch import BatchRun, Mapping

TOPIC = "orders"
FAILURES = Destination(topic="orders-failed")


@dataclass
class Record:
    """What BatchRun reads of kafka-python's ConsumerRecord (events.kafka.KafkaRecord)."""
    offset: int
    topic: str = TOPIC
    partition: int = 0
    timestamp: int = 1_700_000_000_000
    timestamp_type: int = 0
    key: bytes | None = None
    value: bytes | None = b"{}"
    headers: Sequence[tuple[str, bytes | None]] = ()


# An answer: a handler's result (JSON-able), an error (Outcome.ERROR with this error object), or Busy.
@dataclass(frozen=True)
class Fails:
    error_type: str = "Boom"


Answer = Any
Script = Callable[[list[int]], Answer]


@dataclass
class FakeTargets:
    """Invocations recorded as the offsets of their event; answers from `script(offsets)`."""
    script: Script
    calls: list[list[int]] = field(default_factory=list)
    delivered: list[tuple[Destination, dict[str, Any]]] = field(default_factory=list)

    def arn(self, function: str) -> str:
        return f"arn:aws:lambda:us-east-1:000000000000:function:{function}"

    async def invoke(self, function: str, qualifier: str | None, payload: bytes) -> InvocationResult:
        event = orjson.loads(payload)
        offsets = [record["offset"] for records in event["records"].values() for record in records]
        self.calls.append(offsets)
        answer = self.script(offsets)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Fails):
            return _result(Outcome.ERROR, {"errorType": answer.error_type, "errorMessage": "it failed"})
        return _result(Outcome.SUCCESS, answer)

    async def deliver(self, destination: Destination, *, key: bytes, body: bytes) -> None:
        self.delivered.append((destination, orjson.loads(body)))

    def succeeded(self, offsets: list[int]) -> bool:
        """Whether the script answers these offsets with a success."""
        return not isinstance(self.script(offsets), (Fails, BaseException))


def _result(outcome: Outcome, payload: Any) -> InvocationResult:
    return InvocationResult(request_id="r", function="consumer", version="$LATEST", executed_version="$LATEST",
                            outcome=outcome, payload=orjson.dumps(payload), logs="")


def _run(targets: FakeTargets, offsets: range, *, stop: threading.Event | None = None, **event: Any) -> list[int]:
    """Run one batch of these offsets to its end; the offsets it offered to commit, in order."""
    commits: list[int] = []
    config = Config.model_validate({"streams": {"retry_backoff_s": 0.001, "max_retry_backoff_s": 0.002}})
    mapping = Mapping(function="consumer", index=0, event=KafkaEvent(topic=TOPIC, **event))

    async def main() -> None:
        health = RedisHealth("redis://127.0.0.1:1/0", ping=_never_called)
        run = BatchRun(targets=targets, health=health, mapping=mapping, config=config, commit=commits.append,
                       stop=stop or threading.Event())
        await asyncio.wait_for(run.run([Record(offset) for offset in offsets]), timeout=10)

    asyncio.run(main())
    return commits


async def _never_called() -> None:
    raise AssertionError("Redis is not used by these tests")


def poison(bad: int) -> Script:
    return lambda offsets: Fails() if bad in offsets else None


def test_bisect_narrows_a_failing_batch_down_to_the_bad_record_and_runs_the_good_ones_once_in_order() -> None:
    targets = FakeTargets(poison(5))

    commits = _run(targets, range(8), bisect_on_error=True, max_retry_attempts=0, on_failure=FAILURES)

    handled = [offset for call in targets.calls if targets.succeeded(call) for offset in call]
    assert handled == [0, 1, 2, 3, 4, 6, 7]                     # each good record handled once, in order
    assert targets.calls == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]
    [(destination, record)] = targets.delivered
    assert destination == FAILURES
    info = record["KafkaBatchInfo"]
    assert (info["firstRecordOffset"], info["lastRecordOffset"], info["batchSize"]) == (5, 5, 1)
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["responsePayload"]["errorType"] == "Boom"
    assert commits == [4, 5, 6, 8] and commits == sorted(commits)


def test_without_bisect_a_failing_batch_is_retried_whole_then_sent_to_on_failure() -> None:
    targets = FakeTargets(poison(2))

    commits = _run(targets, range(4), max_retry_attempts=2, on_failure=FAILURES)

    assert targets.calls == [[0, 1, 2, 3]] * 3                  # the first attempt and two retries
    [(_, record)] = targets.delivered
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["payload"]["records"][f"{TOPIC}-0"][0]["offset"] == 0
    assert commits == [4]                                        # past the batch only once it went to on_failure


def test_partial_failure_commits_below_the_lowest_failed_offset_and_retries_from_it() -> None:
    answers = iter([{"batchItemFailures": [{"itemIdentifier": "13"}, {"itemIdentifier": {"offset": 12}}]}, None])
    targets = FakeTargets(lambda offsets: next(answers))

    commits = _run(targets, range(10, 15), report_batch_item_failures=True)

    assert targets.calls == [[10, 11, 12, 13, 14], [12, 13, 14]]
    assert commits == [12, 15]
    assert targets.delivered == []


def test_a_failure_reported_at_the_first_offset_commits_nothing_before_the_retry() -> None:
    answers = iter([{"batchItemFailures": [{"itemIdentifier": "10"}]}, {"batchItemFailures": []}])
    targets = FakeTargets(lambda offsets: next(answers))

    commits = _run(targets, range(10, 13), report_batch_item_failures=True)

    assert targets.calls == [[10, 11, 12], [10, 11, 12]]
    assert commits == [13]


@pytest.mark.parametrize("answer", [
    {"batchItemFailures": [{"itemIdentifier": "99"}]},                   # not an offset of the batch
    {"batchItemFailures": [{"itemIdentifier": ""}]},                     # empty
    {"batchItemFailures": "10"},                                          # not a list
    {"batchItemFailures": [{"itemIdentifier": "10", "extra": 1}]},       # an unknown key
])
def test_a_malformed_answer_fails_the_whole_batch(answer: Any) -> None:
    targets = FakeTargets(lambda offsets: answer)

    commits = _run(targets, range(10, 13), report_batch_item_failures=True, max_retry_attempts=1,
                   on_failure=FAILURES)

    assert targets.calls == [[10, 11, 12]] * 2
    [(_, record)] = targets.delivered
    assert record["responsePayload"]["errorType"] == "MalformedBatchItemFailures"
    assert commits == [13]


def test_item_failures_are_ignored_unless_the_mapping_reports_them() -> None:
    targets = FakeTargets(lambda offsets: {"batchItemFailures": [{"itemIdentifier": "11"}]})

    assert _run(targets, range(10, 13)) == [13]
    assert targets.calls == [[10, 11, 12]]


def test_throttles_are_waited_out_and_never_count_as_attempts() -> None:
    answers = iter([Busy(), Busy(), None])
    targets = FakeTargets(lambda offsets: next(answers))

    commits = _run(targets, range(3), max_retry_attempts=0, on_failure=FAILURES)

    assert targets.calls == [[0, 1, 2]] * 3
    assert commits == [3] and targets.delivered == []


def test_a_function_that_does_not_resolve_fails_the_batch_as_resource_not_found() -> None:
    targets = FakeTargets(lambda offsets: NotFound("Function not found: consumer"))

    commits = _run(targets, range(2), max_retry_attempts=0, on_failure=FAILURES)

    [(_, record)] = targets.delivered
    assert record["responsePayload"]["errorType"] == "ResourceNotFoundException"
    assert "responseContext" not in record                       # nothing ran: no executed version
    assert commits == [2]


def test_a_batch_stopped_between_attempts_is_abandoned_with_nothing_committed() -> None:
    stop = threading.Event()

    def fail_then_stop(offsets: list[int]) -> Answer:
        stop.set()               # the partition is taken away while this invocation runs
        return Fails()

    targets = FakeTargets(fail_then_stop)
    commits = _run(targets, range(4), stop=stop, on_failure=FAILURES)

    assert targets.calls == [[0, 1, 2, 3]]
    assert commits == [] and targets.delivered == []
