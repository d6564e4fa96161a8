"""One partition's batch, run to its end: success, partial commits, retries, bisect, on_failure.

A `BatchRun` is an asyncio task on the streams process's executor loop. It reports each offset that
may be committed through `commit(offset)` (called in offset order, never past an unhandled record);
the consumer's poll thread does the committing. `stop` asks it to give up after the current
invocation (a rebalance took the partition away): nothing more is committed then.

A Redis outage is not a failure of the batch: where a batch needs Redis (a cold start fetches the code, a
function missing from the cache, an on_failure function is queued in Redis) it waits for Redis, without
counting an attempt, and goes on when Redis answers; the partition waits meanwhile, nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import orjson

from ..config import Config
from ..events.kafka import KafkaRecord, batch_failure_record, kafka_event
from ..executor import Busy, Outcome
from ..functions.catalog import NotFound, split_name
from ..functions.spec import Destination, KafkaEvent
from ..observability.outage import UNREACHABLE
from ..wiring import WithAsyncQueue
from ..topics.store import Topics
from .items import MalformedItemFailures, lowest_failed_offset

log = logging.getLogger(__name__)
T = TypeVar("T")

CONDITION_RETRIES = "RetryAttemptsExhausted"
CONDITION_AGE = "RecordAgeExceeded"


@dataclass(frozen=True, kw_only=True)
class Mapping:
    """One `kafka` event of one function: an event source mapping."""
    function: str
    index: int
    event: KafkaEvent

    @property
    def name(self) -> str:
        return f"{self.function}/{self.index}"


class Stopped(Exception):
    """The partition was taken away while the batch was being handled."""


class BatchRun:
    def __init__(self, *, services: WithAsyncQueue, mapping: Mapping, config: Config, deliver_topic: Callable[
                 [str, bytes, bytes], None], commit: Callable[[int], None], stop: threading.Event) -> None:
        self._services = services
        self._mapping = mapping
        self._config = config
        self._deliver_topic = deliver_topic
        self._commit = commit
        self._stop = stop
        self._bootstrap = config.kafka_bootstrap_servers or ""

    async def run(self, records: Sequence[KafkaRecord]) -> None:
        pending: list[list[KafkaRecord]] = [list(records)]
        try:
            while pending:
                batch = pending.pop(0)
                halves = await self._resolve(batch)
                pending[0:0] = halves
        except Stopped:
            log.info("batch abandoned: the partition was taken away, or this process is stopping",
                     extra={"mapping": self._mapping.name})

    async def _resolve(self, batch: list[KafkaRecord]) -> list[list[KafkaRecord]]:
        """Handle `batch` until it succeeded or went to on_failure; or return the halves to try instead."""
        event = self._mapping.event
        attempts = throttles = 0
        while True:
            self._check_stop()
            outcome, result_payload, error, executed, low = await self._through_outage(lambda: self._invoke(batch))
            if outcome is Outcome.THROTTLED:
                throttles += 1
                await self._backoff(throttles)
                continue
            if outcome is Outcome.SUCCESS and low is None and error is None:
                self._commit(batch[-1].offset + 1)
                return []
            attempts += 1
            if low is not None:           # partial failure: commit what succeeded, retry from the lowest failure
                if low > batch[0].offset:
                    self._commit(low)
                batch = [record for record in batch if record.offset >= low]
            elif event.bisect_on_error and len(batch) > 1:
                middle = len(batch) // 2
                log.info("bisecting a failed batch", extra={"mapping": self._mapping.name,
                                                            "first_offset": batch[0].offset, "size": len(batch)})
                return [batch[:middle], batch[middle:]]
            condition = self._exhausted(attempts, batch)
            if condition is not None:
                await self._give_up(batch, condition=condition, attempts=attempts, error=error,
                                    executed_version=executed)
                self._commit(batch[-1].offset + 1)
                return []
            await self._backoff(attempts)

    async def _invoke(self, batch: list[KafkaRecord]) -> tuple[Outcome, Any, Any, str | None, int | None]:
        """(outcome, response, error, executed version, lowest failed offset)."""
        name, qualifier = split_name(self._mapping.function, self._mapping.event.qualifier)
        try:
            target = await self._services.catalog.resolve(name, qualifier)
        except NotFound as exc:
            return Outcome.ERROR, None, {"errorType": "ResourceNotFoundException", "errorMessage": str(exc)}, None, None
        payload = orjson.dumps(kafka_event(batch, bootstrap_servers=self._bootstrap))
        try:
            result = await self._services.executor.invoke(target, payload, request_id=str(uuid.uuid4()),
                                                          trigger="stream")
        except Busy:
            return Outcome.THROTTLED, None, None, None, None
        if result.outcome is Outcome.THROTTLED:
            return Outcome.THROTTLED, None, None, None, None
        if not result.ok:
            return result.outcome, None, result.error, result.executed_version, None
        response = orjson.loads(result.payload)
        if not self._mapping.event.report_batch_item_failures:
            return Outcome.SUCCESS, response, None, result.executed_version, None
        try:
            low = lowest_failed_offset(response, batch)
        except MalformedItemFailures as exc:
            error = {"errorType": "MalformedBatchItemFailures", "errorMessage": str(exc)}
            return Outcome.ERROR, response, error, result.executed_version, None
        if low is None:
            return Outcome.SUCCESS, response, None, result.executed_version, None
        error = {"errorType": "BatchItemFailures", "errorMessage": f"the handler reported failures from offset {low}"}
        return Outcome.ERROR, response, error, result.executed_version, low

    def _exhausted(self, attempts: int, batch: list[KafkaRecord]) -> str | None:
        event = self._mapping.event
        if event.max_retry_attempts != -1 and attempts > event.max_retry_attempts:
            return CONDITION_RETRIES
        if event.max_record_age_s != -1 and time.time() * 1000 - batch[0].timestamp > event.max_record_age_s * 1000:
            return CONDITION_AGE
        return None

    async def _give_up(self, batch: list[KafkaRecord], *, condition: str, attempts: int, error: Any,
                       executed_version: str | None) -> None:
        """Deliver the batch to on_failure, retrying the delivery itself until it is done (or stopped)."""
        destination = self._mapping.event.on_failure
        first, last = batch[0], batch[-1]
        where = {"mapping": self._mapping.name, "topic": first.topic, "partition": first.partition,
                 "first_offset": first.offset, "last_offset": last.offset, "condition": condition}
        if destination is None:
            log.error("batch dropped after failing: no on_failure destination is configured", extra=where)
            return
        arn = f"{self._services.executor.arn(self._mapping.function)}"
        record = batch_failure_record(
            records=batch, request_id=str(uuid.uuid4()), function_arn=arn, condition=condition,
            invoke_count=attempts, executed_version=executed_version, error=error,
            bootstrap_servers=self._bootstrap, now_ms=int(time.time() * 1000),
            include_payload=sum(len(r.value or b"") + len(r.key or b"") for r in batch) < 512 * 1024)
        tries = 0
        while True:
            self._check_stop()
            try:
                await self._through_outage(lambda: self._deliver(destination, record,
                                                                 key=f"{first.topic}-{first.partition}".encode()))
                log.warning("batch sent to on_failure", extra={**where, "attempts": attempts})
                return
            except Stopped:
                raise
            except Exception:   # a broker hiccup, a destination function not deployed: the partition waits
                tries += 1
                log.warning("on_failure delivery failed; retrying", extra=where, exc_info=True)
                await self._backoff(tries)

    async def _deliver(self, destination: Destination, record: dict[str, Any], *, key: bytes) -> None:
        body = orjson.dumps(record)
        if destination.topic is not None:
            await asyncio.to_thread(self._deliver_topic, destination.topic, key, body)
            return
        if destination.sns is not None:          # SnsError (a topic that does not exist): retried until it does
            topics = Topics(self._services.blocking_redis, self._config, catalog=self._services.catalog,
                            asyncq=self._services.asyncq)
            await asyncio.to_thread(topics.publish, destination.sns, body.decode())
            return
        assert destination.function is not None
        name, qualifier = split_name(destination.function)
        await self._services.catalog.resolve(name, qualifier)      # NotFound: retried until it exists
        await asyncio.to_thread(self._services.asyncq.accept, function=name, qualifier=qualifier, payload=body,
                                trigger="stream-failure")

    async def _through_outage(self, call: Callable[[], Awaitable[T]]) -> T:
        """`await call()`, waiting for Redis as long as it cannot be reached (Stopped if the partition is
        taken away meanwhile). The outage is logged once for the process, by RedisHealth."""
        health = self._services.health
        while True:
            try:
                return await call()
            except UNREACHABLE as exc:
                health.failed(exc)
            while health.down:              # its probe ends the outage, for every waiter at once
                self._check_stop()
                await asyncio.sleep(0.05)
            self._check_stop()

    async def pause(self, failures: int) -> None:
        """The wait before running a batch again after an unexpected fault (raises nothing when stopped)."""
        try:
            await self._backoff(failures)
        except Stopped:
            pass

    async def _backoff(self, attempt: int) -> None:
        settings = self._config.streams
        delay = min(settings.retry_backoff_s * 2 ** max(attempt - 1, 0), settings.max_retry_backoff_s)
        deadline = time.monotonic() + delay * random.uniform(0.8, 1.2)
        while time.monotonic() < deadline:
            self._check_stop()
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped()
