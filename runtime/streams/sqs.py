"""One `sqs` event source mapping: pollers that long-poll a queue, batch, invoke, and delete what succeeded.

Lambda's semantics: a successful batch is deleted; a failed one (error, timeout, a malformed answer) is left in
the queue, to become visible again when its visibility timeout ends, so that the queue's own redrive policy
(maxReceiveCount -> its dead-letter queue) applies; with `report_batch_item_failures` only the reported messages
stay. While a batch is collected and handled, its messages' visibility is extended, so a handler running past
the queue's visibility timeout is not raced by a second delivery. A throttle (reserved concurrency) is waited
out, the messages kept invisible: it never counts as a receive. Messages that match none of `filter_criteria`
are deleted unhandled, as Lambda does for SQS.

Concurrency: `maximum_concurrency` (Lambda's ScalingConfig) bounds the batches polled or run at once for the
mapping across the cluster: each poller takes a slot of a Redis semaphore (keys.sqs_slots, leases that lapse
when their holder dies) before it receives. Every streams process runs up to `sqs.max_pollers` pollers per
mapping; the slots spread the work over them.

FIFO queues: the queue server holds back a message group while one of its messages is in flight, so a group
has one batch in flight at a time; a failure in a group keeps every later message of that group in the batch,
so the group's order holds through retries.

Faults of the queue server (down, restarted, the queue unknown) are logged once until it answers again, shown
in the mapping's state, and retried with backoff; nothing is deleted that was not handled.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from botocore.exceptions import BotoCoreError, ClientError

from .. import keys
from ..config import Config
from ..events.sqs import MalformedItemFailures, failed_message_ids, sqs_event, sqs_record
from ..executor import Busy, Outcome
from ..functions.catalog import NotFound, split_name
from ..functions.spec import SqsEvent
from ..observability.outage import UNREACHABLE
from ..wiring import WithAsyncQueue
from .slots import SLOT_LEASE_S, Slots
from .sqs_batch import Filters, Settlement, parts
from .sqs_queue import QueueFault, fault_reason, sqs_client
from .sqs_state import Heartbeat, SqsStateWriter

log = logging.getLogger(__name__)

CUT_OFF_S = 2.0              # a batch cut off at the drain deadline has handed its messages back within this


@dataclass(frozen=True, kw_only=True)
class SqsMapping:
    """One `sqs` event of one function: an event source mapping (named by its queue, not its place in `events`)."""
    function: str
    event: SqsEvent

    @property
    def name(self) -> str:
        return f"{self.function}/{self.event.queue_name}"




@dataclass
class _Batch:
    messages: list[dict[str, Any]]
    received_at: float            # time.monotonic() of the first receive
    visible_at: float             # when the first of them becomes visible again unless extended


class SqsPoller:
    """The pollers of one mapping in this process (threads: boto3 blocks), invoking on the executor's loop."""

    def __init__(self, mapping: SqsMapping, *, services: WithAsyncQueue, loop: asyncio.AbstractEventLoop,
                 config: Config, state_redis: redis.Redis) -> None:
        self.mapping = mapping
        self._services = services
        self._loop = loop
        self._config = config
        self._state = SqsStateWriter(state_redis, mapping.function, mapping.event.queue_name)
        event = mapping.event
        self._pollers = min(event.maximum_concurrency, config.sqs.max_pollers)
        self._client = sqs_client(config, pollers=self._pollers)
        self._slots = Slots(state_redis, keys.sqs_slots(mapping.function, event.queue_name),
                             event.maximum_concurrency)
        self._filters = Filters(event.filter_criteria)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping = threading.Event()
        self._drain_until: float | None = None
        self._queue: tuple[str, str, int] | None = None       # (url, arn, visibility timeout s), once resolved
        self._queue_lock = threading.Lock()
        self._failing: str | None = None                      # the fault last logged; None once the queue answers
        self._in_flight = 0
        self._counts_lock = threading.Lock()
        self._handling: set[int] = set()         # the pollers running a batch (a stop waits for those only)
        self._share = self._pollers              # pollers that may take a slot (_fair_share)
        self._result_ok: bool | None = None      # what this process last wrote as the last result
        self._threads = [threading.Thread(target=self._poll, args=(n,), name=f"sqs-{mapping.name}-{n}", daemon=True)
                         for n in range(self._pollers)]
        self._reporter = threading.Thread(target=self._report_loop, name=f"sqs-{mapping.name}-state", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._reporter.start()

    def stop(self, *, drain_until: float | None = None) -> None:
        """Receive no more; let batches in flight finish until `drain_until` (default: the function's timeout
        from now); a batch cut off is handed back to the queue (visible at once) for another poller."""
        self._drain_until = drain_until if drain_until is not None else time.monotonic() + self._timeout_s() + 1
        self._stopping.set()
        # A poller in a long poll is not waited for: when its receive returns, it hands what came back to the
        # queue and ends (or the process has ended, and the messages are visible again after their timeout).
        polls_end = time.monotonic() + 1.0
        for number, thread in enumerate(self._threads):
            while thread.is_alive():
                until = self._drain_until + CUT_OFF_S if number in self._handling else polls_end
                if time.monotonic() >= until:
                    break
                thread.join(0.05)
        self._reporter.join(2)
        try:
            self._slots.give_back_all()      # the next process (or the mapping's new pollers) may take them now
        except UNREACHABLE:
            pass                             # they lapse by themselves (SLOT_LEASE_S)

    @property
    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def _timeout_s(self) -> float:
        latest = self._services.catalog.latest(self.mapping.function)
        return latest.spec.timeout_s if latest is not None else 900.0

    # -- one poller ----------------------------------------------------------------------

    def _poll(self, number: int) -> None:
        holder = f"{self._owner}:{number}"
        failures = 0
        while not self._stopping.is_set():
            if number >= self._share:         # other processes poll too: leave them their part
                self._wait(0.25)
                continue
            try:
                if not self._slots.take(holder):
                    self._wait(0.25 + random.random() * 0.25)
                    continue
            except UNREACHABLE as exc:
                self._services.health.failed(exc)
                self._wait(1.0)
                continue
            try:
                batch = self._collect()
                if batch is not None and self._stopping.is_set():
                    self._hand_back(batch.messages)
                elif batch is not None:
                    self._handling.add(number)
                    try:
                        self._handle(batch)
                    finally:
                        self._handling.discard(number)
                failures = 0
            except QueueFault as exc:
                failures += 1
                self._fault(exc.reason)
                self._wait(min(self._config.sqs.retry_backoff_s * 2 ** (failures - 1),
                               self._config.sqs.max_retry_backoff_s) * random.uniform(0.8, 1.2))
            except UNREACHABLE as exc:       # Redis: the batch's messages come back after their visibility timeout
                self._services.health.failed(exc)
                self._wait(1.0)
            except Exception:
                failures += 1
                log.exception("sqs poller failed unexpectedly; going on", extra={"mapping": self.mapping.name})
                self._wait(min(2.0 ** failures, 30.0))
            finally:
                try:
                    self._slots.give_back(holder)
                except UNREACHABLE:
                    pass          # the lease lapses by itself

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _queue_info(self) -> tuple[str, str, int]:
        """The queue's URL, ARN and visibility timeout, asked of the server once (again after a fault)."""
        with self._queue_lock:
            if self._queue is not None:
                return self._queue
            event = self.mapping.event
            try:
                url = event.queue if event.queue.startswith(("http://", "https://")) else \
                    self._client.get_queue_url(QueueName=event.queue)["QueueUrl"]
                attributes = self._client.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["QueueArn", "VisibilityTimeout"])["Attributes"]
            except (ClientError, BotoCoreError) as exc:
                raise QueueFault(fault_reason(exc)) from None
            region = self._config.sqs.region or self._config.region
            arn = attributes.get("QueueArn") or f"arn:aws:sqs:{region}:{self._config.account_id}:{event.queue_name}"
            self._queue = (url, arn, max(1, int(attributes.get("VisibilityTimeout", 30))))
            return self._queue

    def _call(self, method: str, **params: Any) -> Any:
        try:
            return getattr(self._client, method)(**params)
        except (ClientError, BotoCoreError) as exc:
            with self._queue_lock:
                self._queue = None         # ask again: the queue may have been made again, elsewhere
            raise QueueFault(fault_reason(exc)) from None

    def _collect(self) -> _Batch | None:
        """Receive up to batch_size messages: at once when the window is 0, else until the window ends."""
        url, _, visibility = self._queue_info()
        event = self.mapping.event
        wait_s = self._config.sqs.wait_time_s
        messages: list[dict[str, Any]] = []
        started = time.monotonic()
        window_ends = started + event.batch_window_s
        batch: _Batch | None = None
        while len(messages) < event.batch_size and not self._stopping.is_set():
            now = time.monotonic()
            if messages:
                if now >= window_ends:
                    break
                wait_s = min(20, int(window_ends - now))
                assert batch is not None
                self._keep_invisible(batch, visibility)
            answer = self._call("receive_message", QueueUrl=url, MaxNumberOfMessages=min(10, event.batch_size - len(
                messages)), WaitTimeSeconds=wait_s, MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
            got = answer.get("Messages") or []
            if self._failing is not None:
                self._recovered()
            if not got:
                if not messages:
                    return None            # nothing this long poll: take the slot again (and see if we stop)
                continue
            if batch is None:
                batch = _Batch(messages=messages, received_at=time.monotonic(),
                               visible_at=time.monotonic() + visibility)
            messages.extend(got)
            if event.batch_window_s == 0:
                break
        return batch

    def _keep_invisible(self, batch: _Batch, visibility: int) -> None:
        """Past half the visibility timeout since it was last set: set it again, for every message."""
        now = time.monotonic()
        if batch.visible_at - now > visibility / 2:
            return
        url = self._queue_info()[0]
        for start in range(0, len(batch.messages), 10):
            entries = [{"Id": str(n), "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": visibility}
                       for n, message in enumerate(batch.messages[start:start + 10])]
            self._call("change_message_visibility_batch", QueueUrl=url, Entries=entries)
        batch.visible_at = now + visibility

    # -- one batch -----------------------------------------------------------------------

    def _handle(self, batch: _Batch) -> None:
        url, arn, visibility = self._queue_info()
        region = self._config.sqs.region or self._config.region
        records = [sqs_record(message, queue_arn=arn, region=region) for message in batch.messages]
        kept: list[dict[str, Any]] = []
        done: list[dict[str, Any]] = []           # to delete: filtered out (as Lambda does), then handled
        for record in records:
            (kept if self._filters.wanted(record) else done).append(record)
        self._count(received=len(records), filtered=len(done))
        self._set_in_flight(len(records))
        try:
            settlement = Settlement(fifo=self.mapping.event.fifo)
            for part in parts(kept, limit_bytes=self._config.streams.max_batch_bytes):
                part = settlement.runnable(part)
                if not part:
                    continue
                failed = self._run(part, batch, visibility)
                if failed is None:
                    break              # stopping: this part was cut off and handed back
                done.extend(settlement.succeeded(part, failed))
                if not failed and self._result_ok is not True:
                    self._result_ok = True
                    self._write_ok()
            self._delete(url, done)
        finally:
            self._set_in_flight(-len(records))

    def _run(self, part: list[dict[str, Any]], batch: _Batch, visibility: int) -> set[str] | None:
        """Invoke the function with `part` until it ran (throttles are waited out); the failed messageIds
        (every one when the batch failed), or None when this process stopped meanwhile."""
        throttles = 0
        while True:
            future = asyncio.run_coroutine_threadsafe(self._invoke(part), self._loop)
            while not future.done():
                if self._drain_until is not None and time.monotonic() > self._drain_until:
                    future.cancel()
                    self._hand_back(part)
                    return None
                try:
                    self._keep_invisible(batch, visibility)
                except QueueFault as exc:
                    self._fault(exc.reason)
                futures.wait([future], timeout=min(1.0, max(0.05, visibility / 4)))
            try:
                outcome, failed = future.result()
            except asyncio.CancelledError:
                return None
            if outcome is Outcome.THROTTLED:
                throttles += 1
                self._count(throttled=len(part))
                delay = min(self._config.streams.retry_backoff_s * 2 ** (throttles - 1),
                            self._config.streams.max_retry_backoff_s) * random.uniform(0.8, 1.2)
                until = time.monotonic() + delay
                while time.monotonic() < until:
                    if self._drain_until is not None and time.monotonic() > self._drain_until:
                        self._hand_back(part)
                        return None
                    self._keep_invisible(batch, visibility)
                    self._stopping.wait(min(0.2, max(0.0, until - time.monotonic())))
                continue
            if failed:
                self._count(failed=len(failed))
            return failed

    async def _invoke(self, part: list[dict[str, Any]]) -> tuple[Outcome, set[str]]:
        """(outcome, the failed messageIds); an error fails them all."""
        every = {record["messageId"] for record in part}
        name, qualifier = split_name(self.mapping.function, self.mapping.event.qualifier)
        try:
            target = await self._services.catalog.resolve(name, qualifier)
        except NotFound as exc:
            self._problem(f"the function cannot be resolved: {exc}")
            return Outcome.ERROR, every
        try:
            payload = orjson.dumps(sqs_event(part))
        except TypeError:       # a body that is not valid text (lone surrogates): passed with U+FFFD for them
            payload = orjson.dumps(sqs_event([{**record, "body": record["body"].encode(
                "utf-8", "replace").decode("utf-8")} for record in part]))
        try:
            result = await self._services.executor.invoke(target, payload, request_id=str(uuid.uuid4()),
                                                          trigger="sqs")
        except Busy:
            return Outcome.THROTTLED, set()
        if result.outcome is Outcome.THROTTLED:
            return Outcome.THROTTLED, set()
        if not result.ok:
            self._problem(f"the function failed ({result.outcome.value}); the batch returns to the queue")
            return result.outcome, every
        if not self.mapping.event.report_batch_item_failures:
            return Outcome.SUCCESS, set()
        try:
            return Outcome.SUCCESS, failed_message_ids(orjson.loads(result.payload), part)
        except MalformedItemFailures as exc:
            self._problem(f"malformed batchItemFailures, the whole batch failed: {exc}")
            return Outcome.ERROR, every
        except orjson.JSONDecodeError:
            return Outcome.SUCCESS, set()

    def _delete(self, url: str, records: list[dict[str, Any]]) -> None:
        deleted = 0
        for start in range(0, len(records), 10):
            entries = [{"Id": str(n), "ReceiptHandle": record["receiptHandle"]}
                       for n, record in enumerate(records[start:start + 10])]
            answer = self._call("delete_message_batch", QueueUrl=url, Entries=entries)
            deleted += len(answer.get("Successful") or [])
            for failure in answer.get("Failed") or []:
                log.warning("a handled message could not be deleted; it will be delivered again",
                            extra={"mapping": self.mapping.name, "reason": failure.get("Message")})
        if deleted:
            self._count(deleted=deleted)

    def _hand_back(self, part: list[dict[str, Any]]) -> None:
        """Make messages (records of the event, or as received) visible at once for another poller, when this
        process stops (best effort: else their visibility timeout ends)."""
        handles = [item.get("receiptHandle") or item["ReceiptHandle"] for item in part]
        try:
            url = self._queue_info()[0]
            for start in range(0, len(handles), 10):
                entries = [{"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                           for n, handle in enumerate(handles[start:start + 10])]
                self._client.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        except (ClientError, BotoCoreError, QueueFault):
            pass
        log.info("messages handed back to the queue: this poller is stopping",
                 extra={"mapping": self.mapping.name, "messages": len(handles)})

    # -- state -----------------------------------------------------------------------------

    def _fault(self, reason: str) -> None:
        if self._failing != reason:
            log.error("sqs mapping cannot poll its queue; retrying",
                      extra={"mapping": self.mapping.name, "queue": self.mapping.event.queue, "reason": reason})
        self._failing = reason
        self._problem(reason)

    def _recovered(self) -> None:
        log.info("sqs mapping polls its queue again", extra={"mapping": self.mapping.name})
        self._failing = None
        self._result_ok = True
        self._write_ok()

    def _problem(self, reason: str) -> None:
        self._result_ok = False
        try:
            self._state.problem(reason)
        except UNREACHABLE:
            pass       # the state is for the console; a Redis outage is logged once, by RedisHealth

    def _write_ok(self) -> None:
        try:
            self._state.ok()
        except UNREACHABLE:
            pass

    def _count(self, **counts: int) -> None:
        try:
            self._state.count(**counts)
        except UNREACHABLE:
            pass

    def _set_in_flight(self, change: int) -> None:
        with self._counts_lock:
            self._in_flight += change

    def _report_loop(self) -> None:
        """This process's part of the state, every streams.state_interval_s: its heartbeat and messages in
        flight (a reader counts an owner only while its heartbeat is fresh)."""
        interval = min(self._config.streams.state_interval_s, SLOT_LEASE_S / 4)
        while True:
            beat = Heartbeat(owner=self._owner, in_flight=self._in_flight, at_ms=int(time.time() * 1000),
                             pollers=self._pollers)
            try:
                if self._stopping.is_set() and not self._handling:
                    self._state.leave(self._owner)
                    return
                state = self._state.beat(beat, queue_arn=self._queue[1] if self._queue is not None else None,
                                         fresh_s=3 * interval)
                self._slots.renew()
                self._share = self._fair_share(len(state.processes))
            except UNREACHABLE:
                pass
            self._stopping.wait(interval) if not self._stopping.is_set() else time.sleep(0.05)

    def _fair_share(self, live: int) -> int:
        """The slots this process may hold: maximum_concurrency spread over the `live` processes polling the
        mapping (those whose heartbeat is fresh), so that every one of them gets batches, not the first to start."""
        return max(1, math.ceil(self.mapping.event.maximum_concurrency / max(1, live)))

