"""`lambent streams`: a consumer for every `kafka` event of every function, following deploys.

The executor's event loop runs in this process's main thread; each mapping's consumer polls on a
thread of its own. A reconcile pass (on every catalog change, and every few seconds) starts consumers
for new mappings and stops those of removed or changed ones; a watchdog restarts a consumer whose poll
loop stalled. SIGTERM / Ctrl-C: stop intake, let in-flight batches finish and commit, leave the groups.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

import redis
from kafka import KafkaProducer

from ..config import Config
from ..observability import metrics
from ..services import Services
from .batch import Mapping
from .consumer import MappingConsumer

log = logging.getLogger(__name__)


class StreamsRunner:
    def __init__(self, config: Config) -> None:
        if not config.kafka_bootstrap_servers:
            raise SystemExit("error: `lambent streams` needs kafka_bootstrap_servers "
                             "(config.yaml or LAMBENT_KAFKA_BOOTSTRAP_SERVERS)")
        self._config = config
        self._consumers: dict[tuple[str, int], MappingConsumer] = {}
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        self._state = redis.Redis.from_url(config.redis_url)

    def deliver_topic(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce one on_failure record and wait for the broker's acknowledgement."""
        with self._producer_lock:
            if self._producer is None:
                self._producer = KafkaProducer(bootstrap_servers=self._config.kafka_bootstrap_servers, acks="all",
                                               linger_ms=0, retries=5)
            producer = self._producer
        producer.send(topic, key=key, value=value).get(timeout=30)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        services = await Services.start(self._config, deploy_functions=False)
        changed = asyncio.Event()
        services.catalog.on_change(lambda _name: changed.set())
        log.info("streams started", extra={"bootstrap": self._config.kafka_bootstrap_servers})
        try:
            while not stop.is_set():
                await self._reconcile(services, loop)
                self._watchdog(services, loop)
                changed.clear()
                waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(changed.wait())]
                await asyncio.wait(waiters, timeout=2.0, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            log.info("streams stopping", extra={"consumers": len(self._consumers)})
            await asyncio.gather(*(asyncio.to_thread(consumer.stop) for consumer in self._consumers.values()))
            self._consumers.clear()
            if self._producer is not None:
                await asyncio.to_thread(self._producer.close, 10)
            await services.stop()
            self._state.close()
            log.info("streams stopped")

    def _desired(self, services: Services) -> dict[tuple[str, int], Mapping]:
        return {(name, index): Mapping(function=name, index=index, event=event.kafka)
                for name, index, event in services.catalog.events("kafka") if event.kafka is not None}

    async def _reconcile(self, services: Services, loop: asyncio.AbstractEventLoop) -> None:
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

    def _watchdog(self, services: Services, loop: asyncio.AbstractEventLoop) -> None:
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
    metrics.serve(config.metrics.streams_port, config.metrics.host, role="streams")
    asyncio.run(StreamsRunner(config).run())
