"""`lambent streams`: a consumer for every `kafka` event and the pollers of every `sqs` event, following deploys.

The executor's event loop runs in this process's main thread; each mapping's consumer polls on a
thread of its own. A reconcile pass (on every catalog change, and every few seconds) starts consumers
for new mappings and stops those of removed or changed ones; a watchdog restarts a consumer whose poll
loop stalled. `sqs` mappings (sqs.py) are reconciled the same way; Kafka and the SQS server are each needed only
when configured (kafka_bootstrap_servers, sqs.endpoint_url).

SIGTERM / Ctrl-C: stop intake, let in-flight batches finish and commit until the grace period
(`streams.shutdown_grace_s`) nearly ends, cut off those still running (uncommitted: read again by the next
owner), leave the groups, close. A second signal, or the grace running out, ends the process at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

import redis
from kafka import KafkaProducer
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config import Config
from ..observability import metrics
from ..observability.outage import UNREACHABLE
from ..preflight import KafkaUnfit, check_kafka
from ..shutdown import GracefulStop
from ..wiring import WithAsyncQueue
from . import compat
from .batch import Mapping
from .clients import client_options
from .consumer import MappingConsumer
from .sqs import SqsMapping, SqsPoller

log = logging.getLogger(__name__)
# Closing what is left at shutdown: past its time, or Redis gone (nothing is waited for then).
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, *UNREACHABLE)


class StreamsRunner:
    def __init__(self, config: Config, stop: GracefulStop) -> None:
        if not config.kafka_bootstrap_servers and not config.sqs.endpoint_url:
            raise SystemExit("error: `lambent streams` needs kafka_bootstrap_servers or sqs.endpoint_url "
                             "(config.yaml, LAMBENT_KAFKA_BOOTSTRAP_SERVERS or LAMBENT_SQS__ENDPOINT_URL)")
        self._config = config
        self._stop = stop
        self._consumers: dict[tuple[str, int], MappingConsumer] = {}
        self._pollers: dict[tuple[str, str], SqsPoller] = {}
        self._warned_no_kafka: set[tuple[str, int]] = set()
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        # Written from the poll threads: a Redis that is down must cost them a moment, not redis-py's ten
        # retries (the writes are skipped until Redis is back; see MappingConsumer._report and sqs_state).
        self._state = redis.Redis.from_url(config.redis_url, socket_connect_timeout=1, socket_timeout=2,
                                           retry=Retry(NoBackoff(), 1))     # once more: a connection left from before

    def deliver_topic(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce one on_failure record and wait for the broker's acknowledgement."""
        with self._producer_lock:
            if self._producer is None:
                self._producer = KafkaProducer(**client_options(self._config), acks="all", linger_ms=0, retries=5)
            producer = self._producer
        producer.send(topic, key=key, value=value).get(timeout=30)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop.install(loop)
        services = await WithAsyncQueue.start(self._config)
        changed = asyncio.Event()
        services.catalog.on_change(lambda _name: changed.set())
        log.info("streams started", extra={"bootstrap": self._config.kafka_bootstrap_servers,
                                           "sqs_endpoint": self._config.sqs.endpoint_url})
        try:
            while not self._stop.is_set():
                await self._reconcile(services, loop)
                self._watchdog(services, loop)
                changed.clear()
                waiters = [asyncio.create_task(self._stop.wait()), asyncio.create_task(changed.wait())]
                await asyncio.wait(waiters, timeout=2.0, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            await self._shut_down(services)

    async def _shut_down(self, services: WithAsyncQueue) -> None:
        """Drain, commit and leave the groups until the drain deadline; then close the clients in what is
        left of the grace. Nothing here waits for Redis: what could not be stored is said once and dropped."""
        drain_until = self._stop.drain_deadline()
        log.info("streams stopping", extra={"consumers": len(self._consumers),
                                            "drain_s": round(max(0.0, drain_until - time.monotonic()), 1)})
        sources: list[MappingConsumer | SqsPoller] = [*self._consumers.values(), *self._pollers.values()]
        await asyncio.gather(*(asyncio.to_thread(source.stop, drain_until=drain_until) for source in sources))
        stopped = len(self._consumers) + len(self._pollers)
        self._consumers.clear()
        self._pollers.clear()
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close, max(0.5, min(10.0, self._stop.remaining_s() / 2)))
        try:
            await asyncio.wait_for(services.stop(), timeout=max(0.5, self._stop.remaining_s() - 1.0))
        except _CLOSE_ERRORS as exc:
            log.warning("stopped without storing the last invocation logs: Redis did not take them",
                        extra={"error": str(exc) or type(exc).__name__})
        self._state.close()
        log.info("streams stopped", extra={"consumers": stopped})
        self._stop.stopped()

    def _desired(self, services: WithAsyncQueue) -> dict[tuple[str, int], Mapping]:
        found = {(name, index): Mapping(function=name, index=index, event=event.kafka)
                 for name, index, event in services.catalog.events("kafka") if event.kafka is not None}
        if not self._config.kafka_bootstrap_servers:
            for key in found.keys() - self._warned_no_kafka:
                log.error("a kafka event is not consumed: this server has no kafka_bootstrap_servers",
                          extra={"mapping": f"{key[0]}/{key[1]}"})
            self._warned_no_kafka = set(found)
            return {}
        return found

    def _desired_sqs(self, services: WithAsyncQueue) -> dict[tuple[str, str], SqsMapping]:
        return {(name, event.sqs.queue_name): SqsMapping(function=name, event=event.sqs)
                for name, _index, event in services.catalog.events("sqs") if event.sqs is not None}

    async def _reconcile(self, services: WithAsyncQueue, loop: asyncio.AbstractEventLoop) -> None:
        await self._reconcile_sqs(services, loop)
        desired = self._desired(services)
        for key, consumer in list(self._consumers.items()):
            if desired.get(key) != consumer.mapping:
                log.info("stopping consumer: mapping removed or changed", extra={"mapping": consumer.mapping.name})
                await asyncio.to_thread(consumer.stop)
                del self._consumers[key]
        for key, mapping in desired.items():
            if key not in self._consumers:
                consumer = MappingConsumer(mapping, services=services, loop=loop, config=self._config,
                                           deliver_topic=self.deliver_topic, state_redis=self._state)
                consumer.start()
                self._consumers[key] = consumer

    async def _reconcile_sqs(self, services: WithAsyncQueue, loop: asyncio.AbstractEventLoop) -> None:
        desired = self._desired_sqs(services)
        for key, poller in list(self._pollers.items()):
            if desired.get(key) != poller.mapping or not poller.alive:
                log.info("stopping sqs pollers: mapping removed or changed", extra={"mapping": poller.mapping.name})
                await asyncio.to_thread(poller.stop)
                del self._pollers[key]
        for key, mapping in desired.items():
            if key not in self._pollers:
                poller = SqsPoller(mapping, services=services, loop=loop, config=self._config, state_redis=self._state)
                poller.start()
                self._pollers[key] = poller

    def _watchdog(self, services: WithAsyncQueue, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        for key, consumer in list(self._consumers.items()):
            if consumer.stalled(now) or not consumer.alive:
                log.error("consumer poll loop stalled or died; restarting it", extra={"mapping": consumer.mapping.name})
                threading.Thread(target=consumer.stop, daemon=True).start()
                replacement = MappingConsumer(consumer.mapping, services=services, loop=loop, config=self._config,
                                              deliver_topic=self.deliver_topic, state_redis=self._state)
                replacement.start()
                self._consumers[key] = replacement


def run_streams(config: Config) -> None:
    if config.kafka_bootstrap_servers:
        compat.apply()      # kafka-python's workarounds for this version (the others are logged as skipped)
        try:
            check_kafka(config)
        except KafkaUnfit as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    metrics.serve(config.metrics.streams_port, config.metrics.host, role="streams")
    stop = GracefulStop(role="streams", grace_s=config.streams.shutdown_grace_s)
    asyncio.run(StreamsRunner(config, stop).run())
    stop.ignore_further()
